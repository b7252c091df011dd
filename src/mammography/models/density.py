"""The BI-RADS density model: torchvision EfficientNet-B0 with a 4-class head."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import efficientnet_b0

__all__ = ["NUM_CLASSES", "FEATURE_DIM", "build_density_model"]

NUM_CLASSES = 4
#: width of EfficientNet-B0's pooled features, i.e. the head's expected inputs
FEATURE_DIM = 1280


def build_density_model(num_classes: int = NUM_CLASSES, pretrained_weights: str | Path | None = None) -> nn.Module:
    """EfficientNet-B0 (``weights=None``) whose head predicts ``num_classes`` classes.

    Nothing is downloaded. ``pretrained_weights`` is a local file of backbone
    weights (e.g. ImageNet weights saved with ``torch.save(model.state_dict())``);
    it is read with ``weights_only=True`` and its classifier is ignored.
    """
    model = efficientnet_b0(weights=None)
    if pretrained_weights is not None:
        from mammography.models.checkpoint import load_backbone_weights

        load_backbone_weights(model, pretrained_weights)
    model.classifier[1] = nn.Linear(FEATURE_DIM, num_classes)
    return model
