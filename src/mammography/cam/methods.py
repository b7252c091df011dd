"""The CAM methods: each one says how activations A and gradients G = dScore/dA
of a layer are combined into a map. Notation: A, G are (N, C, h, w); sums
over ``ij`` run over the h x w positions; S_c = sum_ij A_cij is a channel's
sum and M_c = sum_ij |A_cij| its mass; every method ends with a ReLU
(applied by the engine).

================  ==========================================================
``gradcam``       w_c = mean_ij G_cij;        map = sum_c w_c A_c
``gradcam++``     a_cij = 1 / (2 + max(S_c, 0) G_cij) where G_cij > 0;
                  w_c = sum_ij a_cij ReLU(G_cij);  map = sum_c w_c A_c
``hirescam``      map = sum_c G_c * A_c (element-wise, no pooling)
``xgradcam``      w_c = (sum_ij G_cij A_cij) S_c / max(S_c^2, (0.1 M_c)^2);
                  map = sum_c w_c A_c
``layercam``      map = sum_c ReLU(G_c) * A_c
================  ==========================================================

References: Selvaraju et al. ICCV 2017 (Grad-CAM); Chattopadhay et al. WACV
2018 (Grad-CAM++); Draelos & Carin 2020 (HiResCAM); Fu et al. BMVC 2020
(XGrad-CAM); Jiang et al. IEEE TIP 2021 (LayerCAM).

Grad-CAM++ and XGrad-CAM on signed activations
----------------------------------------------
Both papers assume non-negative (post-ReLU) activations. Grad-CAM++'s closed
form (eq. 19, for the exponential of the score) is
``a = G^2 / (2 G^2 + S_c G^3)`` = ``1 / (2 + S_c G)`` wherever G != 0, and only
positions with G > 0 count (the ReLU of eq. 7); XGrad-CAM's weight is
``sum_ij G A / S_c``, the solution of its sensitivity axiom
``w_c S_c = sum_ij G_cij A_cij``. EfficientNet-B0's stage outputs are signed:
BatchNorm outputs of the MBConv projections (``features.1`` .. ``features.7``)
and SiLU outputs (``features.0``, ``features.8``, down to -0.28). There S_c
can be negative or cancel to near zero, which puts a pole in both formulas:
Grad-CAM++'s denominator vanishes at G = -2 / S_c, XGrad-CAM divides by a
near-zero sum. A channel near a pole gets an arbitrarily large weight that
decides the whole map and amplifies any rounding of A or G (float32 vs
float64, one batch size vs another) by orders of magnitude. Evaluating the
formulas in float64 does not help: the float32 model's activations and
gradients themselves differ at 1e-7 between batch sizes.

The forms above are the papers' formulas wherever they are well posed and
bounded elsewhere:

* Grad-CAM++ uses max(S_c, 0): unchanged for every channel whose sum is
  non-negative (all channels of a ReLU network), a = 1/2 (its value at
  S_c = 0) for the others; the denominator is >= 2 wherever G > 0, so
  0 < a <= 1/2 and no epsilon is needed.
* XGrad-CAM keeps ``sum G A / S_c`` for every channel whose sum is at least a
  tenth of its mass (again all channels of a ReLU network) and damps the
  weight continuously to 0 as the sum cancels; |w_c| <= 10 max |G_c|.

The ``grad-cam`` package (pytorch-grad-cam 1.5) computes Grad-CAM++ as
``G^2 / (2 G^2 + S_c G^3 + 1e-6)`` and XGrad-CAM as ``sum G A / (S_c + 1e-7)``.
On ReLU activations its XGrad-CAM equals ours; its Grad-CAM++ equals ours only
where G^2 >> 1e-6: the constant is not scaled to the gradients and lowers a
from 1/2 to 1/3 at |G| = 1e-3 and to 0.01 at |G| = 1e-4, gradient sizes
EfficientNet-B0's stages have. On signed activations both have the poles.
"""

from __future__ import annotations

import torch
from torch import nn

from mammography.cam.base import BaseCAM
from mammography.cam.layers import LayerSpec
from mammography.errors import ConfigError

__all__ = ["GradCAM", "GradCAMPlusPlus", "HiResCAM", "XGradCAM", "LayerCAM", "METHODS", "create_cam"]

#: XGrad-CAM: a channel whose sum S_c is below this fraction of its mass M_c has its weight
#: damped (the division by S_c would amplify rounding by more than 1 / _CANCELLING^2)
_CANCELLING = 0.1


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """sum_c w_c A_c for weights (N, C) and activations (N, C, h, w)."""
    return torch.einsum("nc,nchw->nhw", weights, activations)


class GradCAM(BaseCAM):
    """Grad-CAM: channels weighted by their spatially averaged gradient."""

    name = "gradcam"

    def compute_maps(self, activations, gradients):
        return _weighted_sum(gradients.mean(dim=(2, 3)), activations)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++: positive gradients weighted by second/third-order terms (see the module notes)."""

    name = "gradcam++"

    def compute_maps(self, activations, gradients):
        # a * ReLU(G) = G / (2 + S G) where G > 0, else 0 (G^2 cancelled exactly); with
        # S clamped at 0 the denominator is >= 2: no epsilon, no pole
        positive = torch.relu(gradients)
        total = activations.sum(dim=(2, 3), keepdim=True).clamp_min(0)
        weights = (positive / (2 + total * positive)).sum(dim=(2, 3))
        return _weighted_sum(weights, activations)


class HiResCAM(BaseCAM):
    """HiResCAM: element-wise gradient x activation, summed over channels."""

    name = "hirescam"

    def compute_maps(self, activations, gradients):
        return (gradients * activations).sum(dim=1)


class XGradCAM(BaseCAM):
    """XGrad-CAM: gradients averaged with the activations as weights (see the module notes)."""

    name = "xgradcam"

    def compute_maps(self, activations, gradients):
        # sum G A * S / max(S^2, (k M)^2): sum G A / S where |S| >= k M, continuous and
        # bounded by max|G| / k everywhere; an all-zero channel gets weight 0
        total = activations.sum(dim=(2, 3))
        floor = _CANCELLING * activations.abs().sum(dim=(2, 3))
        contribution = (gradients * activations).sum(dim=(2, 3))
        denominator = torch.maximum(total.square(), floor.square()).clamp_min(torch.finfo(total.dtype).tiny)
        weights = contribution * total / denominator
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
