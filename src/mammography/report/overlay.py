"""Heatmap overlays: colour a CAM with a matplotlib colour map and blend it onto a mammogram.

Everything here works on numpy arrays, so a figure can be redrawn from stored
maps without the model. Heatmaps are expected in [0, 1] (1 = highest
attention; :func:`mammography.cam.result.normalise_maps` scales raw maps so);
with the default ``jet`` map 1.0 is red, 0.6-0.9 yellow/orange,
0.3-0.6 green, 0.1-0.3 blue and 0-0.1 dark blue.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import matplotlib
import numpy as np
from PIL import Image

from mammography.errors import ConfigError
from mammography.io.geometry import Geometry

__all__ = [
    "DisplayTile",
    "get_colormap",
    "colorize",
    "blend",
    "to_display",
    "tile_label",
    "png_bytes",
]


@dataclass(frozen=True)
class DisplayTile:
    """One mammogram with its heatmap, ready to draw.

    Attributes
    ----------
    image : float32 (H, W) in [0, 1], the whole image in its original
        orientation (laterality flip undone, padding removed), dense = bright.
    heatmap : float32 (H, W) in [0, 1], aligned with ``image``.
    y_true, y_pred : int, labels 1..4.
    confidence : float, probability of ``y_pred``.
    image_path : str, the source file (for captions and the manifest).
    visible : bool (H, W) of the pixels the model saw, or None for all of
        them; a centre crop (the earlier project's runs) leaves strips the
        model never saw, drawn without heatmap colour.
    """

    image: np.ndarray
    heatmap: np.ndarray
    y_true: int
    y_pred: int
    confidence: float
    image_path: str = ""
    visible: np.ndarray | None = None

    @property
    def aspect(self) -> float:
        """Height over width of the image."""
        return self.image.shape[0] / self.image.shape[1]

    def rgb(self, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
        """The tile as drawn: :func:`blend` of its image, heatmap and visible area."""
        return blend(self.image, self.heatmap, alpha, colormap, visible=self.visible)


def get_colormap(name: str):
    """The matplotlib colour map called ``name``; a clear error when it does not exist."""
    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ConfigError(
            f"unknown colour map {name!r}; use a matplotlib colour map name such as jet, turbo, inferno or viridis"
        ) from None


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """RGB float32 (H, W, 3) of ``heatmap`` (clipped to [0, 1]) through ``colormap``."""
    cmap = get_colormap(colormap)
    # index the colour map's lookup table as matplotlib does (floor(x * N), 1.0 -> last
    # entry), without building a float64 RGBA image first
    lut = cmap(np.arange(cmap.N))[:, :3].astype(np.float32)
    h = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    idx = np.minimum((h * cmap.N).astype(np.intp), cmap.N - 1)
    return lut[idx]


def blend(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet",
          visible: np.ndarray | None = None) -> np.ndarray:
    """Alpha-blend a coloured heatmap onto a grey-scale image.

    Parameters
    ----------
    image : (H, W) float in [0, 1].
    heatmap : (H, W) float in [0, 1], same shape as ``image``.
    alpha : weight of the heatmap colour, 0 (image only) to 1 (heatmap only).
    colormap : matplotlib colour map name.
    visible : bool (H, W), the pixels the model saw, or None (all). Outside
        it the image stays grey (there is no attention to show) and a thin
        white line marks the edge of the model's view.

    Returns
    -------
    float32 (H, W, 3) RGB in [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be between 0 and 1, got {alpha}")
    image = np.asarray(image, dtype=np.float32)
    if image.shape != np.shape(heatmap):
        raise ConfigError(f"image {image.shape} and heatmap {np.shape(heatmap)} differ in shape")
    grey = np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=-1)
    out = ((1.0 - alpha) * grey + alpha * colorize(heatmap, colormap)).astype(np.float32)
    if visible is None or bool(np.all(visible)):
        return out
    visible = np.asarray(visible, dtype=bool)
    if visible.shape != image.shape:
        raise ConfigError(f"visible area {visible.shape} and image {image.shape} differ in shape")
    out[~visible] = grey[~visible]
    out[_edge(visible)] = 1.0
    return out


def _edge(area: np.ndarray) -> np.ndarray:
    """Pixels of ``area`` next to a pixel outside it (a line about 1/200 of the image thick)."""
    from scipy import ndimage

    width = max(1, round(max(area.shape) / 200))
    return area & ~ndimage.binary_erosion(area, iterations=width, border_value=1)


def to_display(square: np.ndarray, heatmap: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Bring a model-space image and its heatmap back to the image's own frame.

    The model input is the whole mammogram resized (aspect kept) and padded
    into a square, right breasts mirrored. This cuts the padding away and
    undoes the mirroring, at model resolution (enough for a figure tile and
    no need to decode the original file again).

    Parameters
    ----------
    square : (S, S) model-space image in [0, 1] (``MammogramDataset.square``).
    heatmap : (h, w) model-space map of any resolution (e.g. 16x16), [0, 1].
    geometry : the image's :class:`~mammography.io.geometry.Geometry`.

    Returns
    -------
    (image, heatmap): float32 arrays of shape ``geometry.resized_shape``.
    """
    # A Geometry whose "original" is the resized image itself: to_original then
    # upsamples, crops the padding and unflips without any further resizing.
    frame = dataclasses.replace(geometry, original_shape=tuple(geometry.resized_shape))
    img = frame.to_original(np.asarray(square, dtype=np.float32))
    hm = frame.to_original(np.asarray(heatmap, dtype=np.float32))
    return np.clip(img, 0.0, 1.0), np.clip(hm, 0.0, 1.0)


def tile_label(y_true: int, y_pred: int, confidence: float) -> str:
    """The annotation of a tile, e.g. ``"GT 3 · Pred 3 · 0.87"``."""
    return f"GT {int(y_true)} \u00b7 Pred {int(y_pred)} \u00b7 {float(confidence):.2f}"


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode float RGB in [0, 1] (or uint8) as PNG bytes without metadata (same array, same bytes)."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    # zlib level 1: photographs compress little better at higher levels, but take 2-10x longer
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()
