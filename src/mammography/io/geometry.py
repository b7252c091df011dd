"""Model input geometry: fit a whole mammogram into the square model input.

A mammogram is taller than wide and the breast touches one side (the chest
wall). A centre crop would cut the breast, so the image is resized with its
aspect ratio kept (with antialiasing) until its longer side equals the model
size, then padded with zeros to a square. Right breasts may be mirrored so the
chest wall is always on the left. :class:`Geometry` records every step so a
heatmap computed in model space can be mapped back onto the original pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mammography.errors import ConfigError

__all__ = ["Geometry", "fit_to_square", "compute_geometry"]


@dataclass(frozen=True)
class Geometry:
    """How an original image was placed into the square model input.

    Attributes
    ----------
    original_shape : (H, W) of the original pixels.
    size : side of the square model input.
    resized_shape : (h, w) of the image after the aspect-preserving resize.
    offset : (top, left) of the resized image inside the square.
    flipped : True when the image was mirrored left-right *before* resizing
        (laterality normalisation of a right breast).
    """

    original_shape: tuple[int, int]
    size: int
    resized_shape: tuple[int, int]
    offset: tuple[int, int]
    flipped: bool = False

    @property
    def scale(self) -> float:
        """Model pixels per original pixel."""
        return self.resized_shape[0] / self.original_shape[0]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(
            original_shape=tuple(d["original_shape"]),
            size=int(d["size"]),
            resized_shape=tuple(d["resized_shape"]),
            offset=tuple(d["offset"]),
            flipped=bool(d["flipped"]),
        )

    # -- points -----------------------------------------------------------
    def original_to_model(self, rows, cols):
        """Map original pixel coordinates (row, col; centres) to model space."""
        rows = np.asarray(rows, dtype=np.float64)
        cols = np.asarray(cols, dtype=np.float64)
        H, W = self.original_shape
        h, w = self.resized_shape
        if self.flipped:
            cols = (W - 1) - cols
        # pixel centres: continuous coordinate x+0.5 scales by h/H
        r = (rows + 0.5) * (h / H) - 0.5 + self.offset[0]
        c = (cols + 0.5) * (w / W) - 0.5 + self.offset[1]
        return r, c

    def model_to_original(self, rows, cols):
        """Inverse of :meth:`original_to_model`."""
        rows = np.asarray(rows, dtype=np.float64)
        cols = np.asarray(cols, dtype=np.float64)
        H, W = self.original_shape
        h, w = self.resized_shape
        r = (rows - self.offset[0] + 0.5) * (H / h) - 0.5
        c = (cols - self.offset[1] + 0.5) * (W / w) - 0.5
        if self.flipped:
            c = (W - 1) - c
        return r, c

    # -- maps -------------------------------------------------------------
    def crop_model(self, model_map: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Cut the image area (no padding) out of a map at model resolution.

        ``model_map`` is (size, size) or (..., size, size); a lower-resolution
        map must be upsampled to ``size`` first (see :meth:`to_original`).
        """
        t = torch.as_tensor(model_map)
        if t.shape[-2:] != (self.size, self.size):
            raise ConfigError(
                f"map of shape {tuple(t.shape[-2:])} is not at model size {self.size}; upsample it first"
            )
        top, left = self.offset
        h, w = self.resized_shape
        return t[..., top : top + h, left : left + w]

    def to_original(self, heatmap: np.ndarray | torch.Tensor, *, mode: str = "bilinear") -> np.ndarray:
        """Map a model-space heatmap of any resolution onto the original pixels.

        The heatmap covers the whole square model input (e.g. 16x16 for the
        last block of EfficientNet-B0 at 512 px). It is upsampled to the model
        size, the padding is cut away, the rest is resized to the original
        shape and the laterality flip is undone. Returns float32 (H, W), or
        (..., H, W) for stacked maps.
        """
        t = torch.as_tensor(heatmap).detach().to("cpu", torch.float32)
        lead = t.shape[:-2]
        t = t.reshape(1, -1, *t.shape[-2:])
        # 'nearest' takes no align_corners argument.
        corners = {} if mode == "nearest" else {"align_corners": False}
        if t.shape[-2:] != (self.size, self.size):
            t = F.interpolate(t, size=(self.size, self.size), mode=mode, **corners)
        t = self.crop_model(t)
        # An original smaller than the model input is a downsample: antialias
        # it so a peaked map is averaged, not sampled (which can miss a peak).
        shrink = any(o < r for o, r in zip(self.original_shape, self.resized_shape))
        use_aa = shrink and mode in ("bilinear", "bicubic")
        t = F.interpolate(t, size=self.original_shape, mode=mode, antialias=use_aa, **corners)
        if self.flipped:
            t = torch.flip(t, dims=[-1])
        return t.reshape(*lead, *self.original_shape).numpy()

    def to_model(self, image: np.ndarray, *, antialias: bool = True, mode: str = "bilinear") -> np.ndarray:
        """Place an original-resolution array (image or mask) into model space."""
        t = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
        if t.shape[-2:] != tuple(self.original_shape):
            raise ConfigError(
                f"array of shape {tuple(t.shape[-2:])} does not match the original shape {self.original_shape}"
            )
        lead = t.shape[:-2]
        t = t.reshape(1, -1, *t.shape[-2:])
        if self.flipped:
            t = torch.flip(t, dims=[-1])
        use_aa = antialias and mode in ("bilinear", "bicubic")
        t = F.interpolate(t, size=self.resized_shape, mode=mode, antialias=use_aa,
                          **({} if mode == "nearest" else {"align_corners": False}))
        out = torch.zeros((t.shape[0], t.shape[1], self.size, self.size), dtype=torch.float32)
        top, left = self.offset
        h, w = self.resized_shape
        out[..., top : top + h, left : left + w] = t
        return out.reshape(*lead, self.size, self.size).numpy()


def compute_geometry(original_shape: tuple[int, int], size: int = 512, *, flip: bool = False) -> Geometry:
    """Geometry of an aspect-preserving fit of ``original_shape`` into ``size``."""
    if size < 8:
        raise ConfigError(f"model input size {size} is too small (use at least 8 px)")
    H, W = (int(v) for v in original_shape)
    if H < 1 or W < 1:
        raise ConfigError(f"image shape {original_shape} is empty")
    s = size / max(H, W)
    h = max(1, min(size, round(H * s)))
    w = max(1, min(size, round(W * s)))
    top = (size - h) // 2
    left = (size - w) // 2
    return Geometry(original_shape=(H, W), size=size, resized_shape=(h, w), offset=(top, left), flipped=bool(flip))


def fit_to_square(pixels: np.ndarray, size: int = 512, *, flip: bool = False) -> tuple[np.ndarray, Geometry]:
    """Resize ``pixels`` (H, W) keeping its aspect ratio, antialiased, and pad to (size, size).

    Parameters
    ----------
    pixels : 2-D float array, values in [0, 1].
    size : side of the square output.
    flip : mirror left-right first (used to put a right breast's chest wall
        on the left).

    Returns
    -------
    (square float32 array, Geometry)
    """
    if pixels.ndim != 2:
        raise ConfigError(f"expected a 2-D image, got shape {pixels.shape}")
    geom = compute_geometry(pixels.shape, size, flip=flip)
    return geom.to_model(pixels), geom
