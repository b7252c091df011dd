"""EfficientNet-B0 density model and checkpoint loading."""

from mammography.models.density import FEATURE_DIM, NUM_CLASSES, build_density_model

__all__ = ["FEATURE_DIM", "NUM_CLASSES", "build_density_model"]
