"""The result of a CAM computation and the helpers that turn maps into pictures.

The low-resolution maps are the primary result (16 x 16 for EfficientNet-B0's
final block at 512 px): they are what analyses compare and what gets stored.
Normalising, upsampling to the model input, mapping back onto the original
mammogram and fusing several layers are explicit, cheap steps on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from mammography.errors import ConfigError
from mammography.io.geometry import Geometry

__all__ = ["CAMResult", "normalise_maps", "upsample_maps", "fuse_maps", "FUSE_METHODS"]

#: how :func:`fuse_maps` combines layers
FUSE_METHODS = ("mean", "layercam")

# a map whose range is below this is treated as constant (normalised to 0)
_FLAT = 1e-12


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise every map to [0, 1] over its last two axes.

    Parameters
    ----------
    maps : (..., h, w) tensor, e.g. (B, h, w) or (B, K, h, w).

    Returns
    -------
    Tensor of the same shape and dtype; a constant map becomes all zeros.
    """
    flat = maps.flatten(-2)
    lo = flat.amin(-1, keepdim=True)
    hi = flat.amax(-1, keepdim=True)
    span = hi - lo
    out = torch.where(span > _FLAT, (flat - lo) / span.clamp_min(_FLAT), torch.zeros_like(flat))
    return out.view_as(maps)


def upsample_maps(maps: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize maps (..., h, w) to ``size`` (bilinear, pixel centres aligned as in
    ``align_corners=False``, the convention of OpenCV's and PIL's resize).

    Parameters
    ----------
    maps : (..., h, w) tensor with at least 2 dimensions.
    size : side of a square or (height, width).
    mode : ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
    """
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    lead = maps.shape[:-2]
    x = maps.reshape(1, -1, *maps.shape[-2:]).float()
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    x = F.interpolate(x, size=size, mode=mode, **kwargs)
    return x.reshape(*lead, *size).to(maps.dtype)


def fuse_maps(
    maps: Sequence[torch.Tensor],
    how: str = "mean",
    size: int | tuple[int, int] | None = None,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Fuse maps of several layers into one.

    Every map is min-max normalised, then upsampled to ``size`` (default: the
    largest map's size) and combined:

    * ``"mean"``: the mean of the normalised maps;
    * ``"layercam"``: the hierarchical fusion of LayerCAM (Jiang et al., IEEE
      TIP 2021, eq. 9): each normalised map is scaled by ``tanh(gamma * M)``
      so shallow layers' small values are not drowned out, then the
      element-wise maximum is taken.

    Parameters
    ----------
    maps : tensors (..., h_i, w_i) with the same leading shape.
    how : one of :data:`FUSE_METHODS`.
    size : output side or (height, width).
    gamma : LayerCAM's scaling factor (2 in the paper).

    Returns
    -------
    Tensor (..., H, W) in [0, 1] (``"mean"``) or [0, tanh(gamma)] (``"layercam"``).
    """
    if how not in FUSE_METHODS:
        raise ConfigError(f"unknown fusion {how!r}; use one of {', '.join(FUSE_METHODS)}")
    maps = list(maps)
    if not maps:
        raise ConfigError("nothing to fuse: no maps given")
    if size is None:
        size = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    scaled = [upsample_maps(normalise_maps(m.float()), size) for m in maps]
    stack = torch.stack(scaled)
    if how == "mean":
        return stack.mean(0)
    return torch.tanh(gamma * stack).amax(0)


@dataclass(frozen=True, eq=False)
class CAMResult:
    """Class activation maps of one batch, plus what the model predicted.

    Attributes
    ----------
    maps : layer name -> maps, float32, on the model's device until
        :meth:`cpu` is called. (B, h, w) for one target class per image,
        (B, K, h, w) when every class was explained (``targets="all"``).
        Values are the method's raw, non-negative CAM values; see
        :meth:`normalise`.
    logits : (B, K) float32 class scores.
    probs : (B, K) float32 softmax probabilities.
    targets : (B,) int64 class index explained per image, or (B, K) with row
        ``0..K-1`` for ``targets="all"``. Indices are 0-based: 0 = BI-RADS 1 (A).
    method : name of the CAM method (``"gradcam"``, ...).
    input_size : (H, W) of the model input the maps belong to.
    """

    maps: dict[str, torch.Tensor]
    logits: torch.Tensor
    probs: torch.Tensor
    targets: torch.Tensor
    method: str
    input_size: tuple[int, int]

    # -- access -----------------------------------------------------------
    @property
    def layers(self) -> tuple[str, ...]:
        """Layer names in the order they were requested."""
        return tuple(self.maps)

    @property
    def all_classes(self) -> bool:
        """True when maps hold every class, (B, K, h, w)."""
        return self.targets.ndim == 2

    @property
    def predictions(self) -> torch.Tensor:
        """(B,) int64 predicted class index (0-based)."""
        return self.logits.argmax(1)

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def __getitem__(self, layer: str) -> torch.Tensor:
        return self.map(layer)

    def map(self, layer: str | None = None) -> torch.Tensor:
        """Maps of one layer; ``None`` means the last requested layer (the deepest
        for ``"stages"``)."""
        if layer is None:
            layer = self.layers[-1]
        try:
            return self.maps[layer]
        except KeyError:
            raise ConfigError(f"no maps for layer {layer!r}; this result has {', '.join(self.layers)}") from None

    def for_class(self, classes: int | Sequence[int] | torch.Tensor) -> "CAMResult":
        """Pick one class per image from an all-classes result.

        Parameters
        ----------
        classes : a class index for every image, or one per image (B,).

        Returns
        -------
        CAMResult with (B, h, w) maps and (B,) targets.
        """
        if not self.all_classes:
            raise ConfigError("for_class needs a result computed with targets='all'")
        idx = torch.as_tensor(classes, dtype=torch.long, device=self.logits.device).expand(len(self)).clone()
        rows = torch.arange(len(self), device=idx.device)
        maps = {n: m[rows, idx.to(m.device)] for n, m in self.maps.items()}
        return replace(self, maps=maps, targets=idx.to(self.targets.device))

    # -- transforms ---------------------------------------------------------
    def normalise(self) -> "CAMResult":
        """Min-max normalise every map (per image, class and layer) to [0, 1]."""
        return replace(self, maps={n: normalise_maps(m) for n, m in self.maps.items()})

    def upsample(self, size: int | tuple[int, int] | None = None, mode: str = "bilinear") -> "CAMResult":
        """Resize every map to the model input (or ``size``); see :func:`upsample_maps`."""
        size = self.input_size if size is None else size
        return replace(self, maps={n: upsample_maps(m, size, mode) for n, m in self.maps.items()})

    def fuse(self, how: str = "mean", size: int | tuple[int, int] | None = None, gamma: float = 2.0) -> "CAMResult":
        """Fuse all layers into one map named ``"fused"``; see :func:`fuse_maps`."""
        fused = fuse_maps(list(self.maps.values()), how=how, size=size, gamma=gamma)
        return replace(self, maps={"fused": fused})

    def to_original(
        self, geometry: Geometry | Sequence[Geometry], layer: str | None = None, mode: str = "bilinear"
    ) -> list[np.ndarray]:
        """Map one layer's maps onto each original mammogram.

        Parameters
        ----------
        geometry : one :class:`~mammography.io.geometry.Geometry` per image
            (or one shared by all), as returned by ``prepare_input``.
        layer : which layer (default: the last requested).
        mode : interpolation mode.

        Returns
        -------
        list (one per image) of float32 arrays (H_i, W_i), or (K, H_i, W_i)
        for an all-classes result.
        """
        maps = self.map(layer)
        geoms = [geometry] * len(self) if isinstance(geometry, Geometry) else list(geometry)
        if len(geoms) != len(self):
            raise ConfigError(f"got {len(geoms)} geometries for {len(self)} images")
        for g in geoms:
            if g.size != self.input_size[0] or self.input_size[0] != self.input_size[1]:
                raise ConfigError(
                    f"geometry of a {g.size} px input does not match maps computed at {self.input_size}"
                )
        return [g.to_original(m, mode=mode) for g, m in zip(geoms, maps)]

    def cpu(self) -> "CAMResult":
        """The same result with every tensor on the CPU."""
        return replace(
            self,
            maps={n: m.cpu() for n, m in self.maps.items()},
            logits=self.logits.cpu(),
            probs=self.probs.cpu(),
            targets=self.targets.cpu(),
        )

    def numpy(self) -> dict[str, np.ndarray]:
        """Flat dict of numpy arrays: ``logits``, ``probs``, ``targets`` and
        ``maps/<layer>`` per layer (ready for ``np.savez_compressed``)."""
        out = {
            "logits": self.logits.detach().cpu().numpy(),
            "probs": self.probs.detach().cpu().numpy(),
            "targets": self.targets.detach().cpu().numpy(),
        }
        for name, m in self.maps.items():
            out[f"maps/{name}"] = m.detach().cpu().numpy()
        return out
