"""The CAM methods: each one says how activations A and gradients G = dScore/dA
of a layer are combined into a map. Notation: A, G are (N, C, h, w); sums
over ``ij`` run over the h x w positions; every method ends with a ReLU
(applied by the engine).

================  ==========================================================
``gradcam``       w_c = mean_ij G_cij;        map = sum_c w_c A_c
``gradcam++``     a_cij = G^2 / (2 G^2 + (sum_ij A_c) G^3)  (0 where G = 0);
                  w_c = sum_ij a_cij ReLU(G_cij);  map = sum_c w_c A_c
``hirescam``      map = sum_c G_c * A_c (element-wise, no pooling)
``xgradcam``      w_c = sum_ij G_cij A_cij / sum_ij A_cij;  map = sum_c w_c A_c
``layercam``      map = sum_c ReLU(G_c) * A_c
================  ==========================================================

References: Selvaraju et al. ICCV 2017 (Grad-CAM); Chattopadhay et al. WACV
2018 (Grad-CAM++, eq. 19, closed form for an exponential of the score, as in
the ``grad-cam`` package); Draelos & Carin 2020 (HiResCAM); Fu et al. BMVC
2020 (XGrad-CAM); Jiang et al. IEEE TIP 2021 (LayerCAM).
"""

from __future__ import annotations

import torch
from torch import nn

from mammography.cam.base import BaseCAM
from mammography.cam.layers import LayerSpec
from mammography.errors import ConfigError

__all__ = ["GradCAM", "GradCAMPlusPlus", "HiResCAM", "XGradCAM", "LayerCAM", "METHODS", "create_cam"]

# keeps divisions finite where a channel is all zero; the grad-cam package
# uses the same constants, so results agree with it to float precision
_EPS_PLUSPLUS = 1e-6
_EPS_XGRAD = 1e-7


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """sum_c w_c A_c for weights (N, C) and activations (N, C, h, w)."""
    return torch.einsum("nc,nchw->nhw", weights, activations)


class GradCAM(BaseCAM):
    """Grad-CAM: channels weighted by their spatially averaged gradient."""

    name = "gradcam"

    def compute_maps(self, activations, gradients):
        return _weighted_sum(gradients.mean(dim=(2, 3)), activations)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++: positive gradients weighted by second/third-order terms."""

    name = "gradcam++"

    def compute_maps(self, activations, gradients):
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        sum_a = activations.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + _EPS_PLUSPLUS)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * torch.relu(gradients)).sum(dim=(2, 3))
        return _weighted_sum(weights, activations)


class HiResCAM(BaseCAM):
    """HiResCAM: element-wise gradient x activation, summed over channels."""

    name = "hirescam"

    def compute_maps(self, activations, gradients):
        return (gradients * activations).sum(dim=1)


class XGradCAM(BaseCAM):
    """XGrad-CAM: gradients weighted by the normalised activations."""

    name = "xgradcam"

    def compute_maps(self, activations, gradients):
        sum_a = activations.sum(dim=(2, 3))
        weights = (gradients * activations).sum(dim=(2, 3)) / (sum_a + _EPS_XGRAD)
        return _weighted_sum(weights, activations)


class LayerCAM(BaseCAM):
    """LayerCAM: element-wise positive gradient x activation."""

    name = "layercam"

    def compute_maps(self, activations, gradients):
        return (torch.relu(gradients) * activations).sum(dim=1)


#: method name -> class (the names the CLI accepts)
METHODS: dict[str, type[BaseCAM]] = {
    cls.name: cls for cls in (GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM)
}

_ALIASES = {"gradcampp": "gradcam++", "grad-cam": "gradcam", "grad-cam++": "gradcam++", "xgrad-cam": "xgradcam"}


def create_cam(method: str, model: nn.Module, layers: LayerSpec = None, **kwargs) -> BaseCAM:
    """Build a CAM by method name.

    Parameters
    ----------
    method : one of :data:`METHODS` (``gradcam``, ``gradcam++``, ``hirescam``,
        ``xgradcam``, ``layercam``); case-insensitive.
    model, layers, kwargs : passed to the method's constructor (see
        :class:`~mammography.cam.base.BaseCAM`).
    """
    key = method.lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise ConfigError(f"unknown CAM method {method!r}; use one of {', '.join(METHODS)}")
    return METHODS[key](model, layers, **kwargs)
