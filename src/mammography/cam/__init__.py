"""Grad-CAM engine: exact, batched, layer-wise, and about as cheap as a forward pass.

>>> from mammography.cam import GradCAM
>>> with GradCAM(model, layers="stages") as cam:      # features.0 .. features.8
...     res = cam(images, targets="all")              # every class, one forward
>>> res["features.8"].shape                           # (B, 4, 16, 16) at 512 px
>>> heat = res.for_class(res.predictions).fuse("mean").upsample()

See :mod:`mammography.cam.base` for how gradients are computed,
:mod:`mammography.cam.methods` for the formulas and
:mod:`mammography.cam.result` for normalising, upsampling, mapping back onto
the original mammogram and fusing layers.
"""

from mammography.cam.base import BaseCAM, TargetSpec
from mammography.cam.layers import TargetLayer, default_layer_name, resolve_layers, stage_names
from mammography.cam.methods import (
    METHODS,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
    create_cam,
)
from mammography.cam.result import FUSE_METHODS, CAMResult, fuse_maps, normalise_maps, upsample_maps

__all__ = [
    "BaseCAM",
    "TargetSpec",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "XGradCAM",
    "LayerCAM",
    "METHODS",
    "create_cam",
    "CAMResult",
    "normalise_maps",
    "upsample_maps",
    "fuse_maps",
    "FUSE_METHODS",
    "TargetLayer",
    "resolve_layers",
    "default_layer_name",
    "stage_names",
]
