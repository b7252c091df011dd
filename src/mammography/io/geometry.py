"""Model input geometry: where an original mammogram lies in the square model input.

A mammogram is taller than wide and the breast touches one side (the chest
wall). A centre crop would cut the breast, so this project's own runs resize
the image with its aspect ratio kept (with antialiasing) until its longer
side equals the model size, then pad it with zeros to a square
(:func:`compute_geometry`). Right breasts may be mirrored so the chest wall is
always on the left.

Runs of the earlier ``mammography-pipelines`` project were trained on another
placement: the *shorter* side resized to the model size, then a centre crop
(:func:`compute_crop_geometry`). Their heatmaps cover only the cropped
square; the strips cut away have no attention at all.

:class:`Geometry` records either placement: the resized image of shape
``resized_shape`` has its top-left corner at ``offset`` in the square, which
is positive for padding and negative for a crop. Every mapping between model
space and the original pixels goes through it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mammography.errors import ConfigError

__all__ = ["Geometry", "fit_to_square", "compute_geometry", "compute_crop_geometry"]


@dataclass(frozen=True)
class Geometry:
    """How an original image was placed into the square model input.

    Attributes
    ----------
    original_shape : (H, W) of the original pixels.
    size : side of the square model input.
    resized_shape : (h, w) of the image after the aspect-preserving resize.
    offset : (top, left) of the resized image's corner in the square:
        >= 0 when it is padded into the square, < 0 on a side that a centre
        crop cut (the earlier project's placement).
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

    # -- regions ----------------------------------------------------------
    @property
    def crops(self) -> bool:
        """True when part of the resized image lies outside the square (a centre crop)."""
        (top, left), (h, w) = self.offset, self.resized_shape
        return top < 0 or left < 0 or top + h > self.size or left + w > self.size

    def visible_box(self) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of the image's pixels inside the model
        square (end-exclusive); the rest of the square is padding."""
        (top, left), (h, w) = self.offset, self.resized_shape
        return max(top, 0), max(left, 0), min(top + h, self.size), min(left + w, self.size)

    def image_area(self) -> np.ndarray:
        """bool (size, size): the model pixels that show the image (not padding)."""
        area = np.zeros((self.size, self.size), dtype=bool)
        r0, c0, r1, c1 = self.visible_box()
        area[r0:r1, c0:c1] = True
        return area

    def visible_original(self) -> np.ndarray:
        """bool (H, W): the original pixels the model saw (all of them unless a
        centre crop cut strips away)."""
        H, W = self.original_shape
        r, _ = self.original_to_model(np.arange(H), np.zeros(H))
        _, c = self.original_to_model(np.zeros(W), np.arange(W))
        rows = (r >= -0.5) & (r < self.size - 0.5)
        cols = (c >= -0.5) & (c < self.size - 0.5)
        return rows[:, None] & cols[None, :]

    # -- maps -------------------------------------------------------------
    def crop_model(self, model_map: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The resized image's frame cut out of a map at model resolution.

        ``model_map`` is (size, size) or (..., size, size); a lower-resolution
        map must be upsampled to ``size`` first (see :meth:`to_original`).
        Returns (..., h, w) = ``resized_shape``: the padding is dropped and,
        for a centre-cropped image, the strips the model never saw are 0.
        """
        t = torch.as_tensor(model_map)
        if t.shape[-2:] != (self.size, self.size):
            raise ConfigError(
                f"map of shape {tuple(t.shape[-2:])} is not at model size {self.size}; upsample it first"
            )
        top, left = self.offset
        h, w = self.resized_shape
        r0, c0, r1, c1 = self.visible_box()
        if (r0, c0, r1, c1) == (top, left, top + h, left + w):
            return t[..., r0:r1, c0:c1]
        out = t.new_zeros((*t.shape[:-2], h, w))
        out[..., r0 - top : r1 - top, c0 - left : c1 - left] = t[..., r0:r1, c0:c1]
        return out

    def place_resized(self, array: np.ndarray) -> np.ndarray:
        """Put an array of the resized image's frame (``resized_shape``, original
        orientation) where the model saw it: mirrored when ``flipped``, padded
        with zeros or cropped to the (size, size) square. Keeps the dtype."""
        arr = np.asarray(array)
        if arr.shape[-2:] != tuple(self.resized_shape):
            raise ConfigError(f"array of shape {arr.shape[-2:]} is not at the resized shape {self.resized_shape}")
        if self.flipped:
            arr = arr[..., ::-1]
        out = np.zeros((*arr.shape[:-2], self.size, self.size), dtype=arr.dtype)
        top, left = self.offset
        r0, c0, r1, c1 = self.visible_box()
        out[..., r0:r1, c0:c1] = arr[..., r0 - top : r1 - top, c0 - left : c1 - left]
        return out

    def to_original(self, heatmap: np.ndarray | torch.Tensor, *, mode: str = "bilinear") -> np.ndarray:
        """Map a model-space heatmap of any resolution onto the original pixels.

        The heatmap covers the whole square model input (e.g. 16x16 for the
        last block of EfficientNet-B0 at 512 px). It is upsampled to the model
        size, the padding is cut away (for a centre crop, the strips the model
        never saw are 0), the rest is resized to the original shape and the
        laterality flip is undone. Returns float32 (H, W), or (..., H, W) for
        stacked maps.
        """
        t = torch.as_tensor(heatmap).detach().to("cpu", torch.float32)
        return self.map_to_original(t, mode=mode).numpy()

    def map_to_original(self, heatmap: torch.Tensor, *, mode: str = "bilinear") -> torch.Tensor:
        """:meth:`to_original` on the heatmap's own device: float32 tensor (..., H, W).

        Stacked maps are resampled as a batch of one-channel images, which the
        CPU kernels treat exactly as single maps (as channels of one image they
        round differently), so a batch equals its maps mapped one by one; on a
        GPU the measurements of a whole batch stay there.
        """
        t = heatmap.detach().to(dtype=torch.float32)
        lead = t.shape[:-2]
        t = t.reshape(-1, 1, *t.shape[-2:])
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
        return t.reshape(*lead, *self.original_shape)

    def to_model(self, image: np.ndarray, *, antialias: bool = True, mode: str = "bilinear") -> np.ndarray:
        """Place an original-resolution array (image or mask) into model space."""
        t = self.to_resized(image, antialias=antialias, mode=mode)
        lead = t.shape[:-2]
        t = t.reshape(1, -1, *t.shape[-2:])
        out = torch.zeros((t.shape[0], t.shape[1], self.size, self.size), dtype=torch.float32)
        top, left = self.offset
        r0, c0, r1, c1 = self.visible_box()
        out[..., r0:r1, c0:c1] = t[..., r0 - top : r1 - top, c0 - left : c1 - left]
        return out.reshape(*lead, self.size, self.size).numpy()

    def to_resized(self, image: np.ndarray, *, antialias: bool = True, mode: str = "bilinear") -> torch.Tensor:
        """An original-resolution array mirrored (when ``flipped``) and resized to ``resized_shape``, the
        first step of :meth:`to_model` (no padding, no crop): float32 tensor (..., h, w)."""
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
        return t.reshape(*lead, *self.resized_shape)


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


def compute_crop_geometry(original_shape: tuple[int, int], size: int) -> Geometry:
    """Geometry of the earlier ``mammography-pipelines`` placement: shorter side to ``size``, centre crop.

    Follows torchvision's documented rules, which that project used
    (``resize(img, [size])`` then ``center_crop(img, [size, size])``): the
    shorter side becomes ``size`` and the longer one
    ``int(size * long / short)`` (truncated); the crop starts at
    ``int(round((side - size) / 2))`` on each axis. Never flipped.
    """
    if size < 8:
        raise ConfigError(f"model input size {size} is too small (use at least 8 px)")
    H, W = (int(v) for v in original_shape)
    if H < 1 or W < 1:
        raise ConfigError(f"image shape {original_shape} is empty")
    if W <= H:
        w, h = size, int(size * H / W)
    else:
        h, w = size, int(size * W / H)
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return Geometry(original_shape=(H, W), size=size, resized_shape=(h, w), offset=(-top, -left), flipped=False)


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
