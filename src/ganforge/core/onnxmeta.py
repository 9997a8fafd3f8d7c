"""The keys of an ONNX generator's ``metadata_props``: written by ``ganforge export``, read by
``deploy.onnxrt`` (generate, serve), ``export --verify`` and ``tracking`` (the logged model's
signature). One place for the names, so a renamed key cannot leave a reader behind.

Values are text: numbers in decimal, ``CONDITIONAL`` "true"/"false", ``CLASS_NAMES`` a JSON list.
"""

from __future__ import annotations

PREFIX = "ganforge."  # every key starts with it; a file with none is not a ganforge generator
FAMILY = PREFIX + "family"  # train.model, e.g. "cdcgan"
LATENT_DIM = PREFIX + "latent_dim"  # the width of input z
CONDITIONAL = PREFIX + "conditional"  # whether input labels exists
NUM_CLASSES = PREFIX + "num_classes"
CLASS_NAMES = PREFIX + "class_names"
IMAGE_SIZE = PREFIX + "image_size"
CHANNELS = PREFIX + "channels"
OUTPUT_RANGE = PREFIX + "output_range"  # what output images holds, in words
TRAINING_RUN_ID = PREFIX + "training_run_id"  # the MLflow run that trained it ("" untracked)
PARAMS_SHA256 = PREFIX + "params_sha256"
GENERATOR_SHA256 = PREFIX + "generator_sha256"  # the generator.pt it was exported from
STEP = PREFIX + "step"  # the training step of the shipped weights
