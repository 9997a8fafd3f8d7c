"""Deployment: the exported ONNX generator on onnxruntime (``onnxrt``) behind ``ganforge
generate`` and the HTTP service (``service``). Neither imports torch."""
