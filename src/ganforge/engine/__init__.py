"""Engines: the adversarial training step (``trainer``) and the feature network's
classifier training (``featurenet``). Pure computation on tensors; the stages do the I/O."""
