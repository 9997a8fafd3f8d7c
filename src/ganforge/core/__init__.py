"""The bottom layer: files, devices, prepared datasets, checkpoints and grids.

Nothing here imports a model family, a metric, a stage or an outside system.
"""
