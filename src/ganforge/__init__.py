"""ganforge: train, judge and ship GAN image generators.

The core (config, data, models, losses, train) needs only torch, torchvision, numpy,
scikit-learn, pillow, pyyaml, pydantic and tqdm; MLflow, DVC and Prefect are imported
lazily at the edges.
"""

__version__ = "0.1.0"
