"""The pipeline's stages, one module each, each a function the CLI calls:
prepare -> featurenet -> train -> evaluate -> export -> promote."""
