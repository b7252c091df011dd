"""The BI-RADS density model: torchvision EfficientNet-B0 with a 4-class head."""

from __future__ import annotations

from torch import nn
from torchvision.models import efficientnet_b0

__all__ = ["NUM_CLASSES", "FEATURE_DIM", "build_density_model"]

NUM_CLASSES = 4
#: width of EfficientNet-B0's pooled features, i.e. the head's expected inputs
FEATURE_DIM = 1280


def build_density_model(num_classes: int = NUM_CLASSES) -> nn.Module:
    """EfficientNet-B0 (``weights=None``) whose head predicts ``num_classes`` classes.

    Nothing is downloaded; the weights are random. Local backbone weights
    (``--pretrained-weights``) are loaded into it with
    :func:`mammography.models.checkpoint.load_backbone_weights`, a trained
    checkpoint with :func:`~mammography.models.checkpoint.load_density_checkpoint`.
    """
    model = efficientnet_b0(weights=None)
    model.classifier[1] = nn.Linear(FEATURE_DIM, num_classes)
    return model
