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

from mammography._lazy import lazy_exports

# imported on first use, so reading a constant of a light module (mammography.cam.defaults: the command
# line's --help) does not load torch and the engine
_EXPORTS = {
    "BaseCAM": "mammography.cam.base",
    "TargetSpec": "mammography.cam.base",
    "GradCAM": "mammography.cam.methods",
    "GradCAMPlusPlus": "mammography.cam.methods",
    "HiResCAM": "mammography.cam.methods",
    "XGradCAM": "mammography.cam.methods",
    "LayerCAM": "mammography.cam.methods",
    "METHODS": "mammography.cam.methods",
    "create_cam": "mammography.cam.methods",
    "CAMResult": "mammography.cam.result",
    "normalise_maps": "mammography.cam.result",
    "upsample_maps": "mammography.cam.result",
    "fuse_maps": "mammography.cam.result",
    "FUSE_METHODS": "mammography.cam.result",
    "TargetLayer": "mammography.cam.layers",
    "resolve_layers": "mammography.cam.layers",
    "default_layer_name": "mammography.cam.layers",
    "stage_names": "mammography.cam.layers",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
