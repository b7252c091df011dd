"""The earlier ``mammography-pipelines`` project's image rule, reproduced exactly.

Users bring runs trained by that project. Its models saw images made by
another rule than this package's :func:`~mammography.io.read_mammogram` +
:func:`~mammography.io.prepare_input`, and a model must always get exactly
the input it was trained on, so its runs are fed through this module
(chosen by the run's preprocessing record, :mod:`mammography.data.preprocess`).

The rule, as that project's code applies it (DICOM):

1. the stored pixel values as float32;
2. ``value * RescaleSlope + RescaleIntercept`` (1 and 0 when absent), in
   float32;
3. MONOCHROME1 inverted as ``max - value`` (over the image's own maximum);
4. clipped to the 0.5 / 99.5 percentiles of the *whole* image (exact
   percentiles, linear interpolation; the image's min / max when those are
   equal, all zeros for a constant image) and scaled to [0, 1];
5. ``uint8(value * 255)`` (truncated), replicated to three channels.

PNG / JPEG / TIFF files are converted by Pillow to 8-bit RGB as they are.
No VOI LUT or Window Center / Width is used, and no laterality flip.

One more step applied where that project's in-memory image cache was on
(its ``cache_mode`` ``memory``, which its ``auto`` chose for a set of at
most 1000 images none of which is a DICOM file): the RGB image was shrunk
with Pillow's ``thumbnail((size, size), BICUBIC)`` before anything else
(``thumbnail_to`` here).

The placement into the model square (shorter side resized to the model size
with torchvision's bicubic filter on the uint8 image, without antialiasing,
then a centre crop, then ``to_dtype`` scaling to [0, 1]) is
:func:`mammography.io.prepare.prepare_pipelines_input`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mammography.errors import ImageReadError
from mammography.io.mammogram import check_dimensions, sniff_format

__all__ = ["MEMORY_CACHE_MAX", "PIPELINES_DICOM_SUFFIXES", "PIPELINES_PERCENTILES", "memory_cache_used",
           "read_pipelines_image"]

#: the earlier project's robust window (percent)
PIPELINES_PERCENTILES = (0.5, 99.5)
#: the file name endings the earlier project took for DICOM files
PIPELINES_DICOM_SUFFIXES = (".dcm", ".dicom")
#: its ``cache_mode auto`` used the in-memory cache for at most this many images with no DICOM among them
MEMORY_CACHE_MAX = 1000


def memory_cache_used(cache_mode, image_paths) -> bool:
    """Whether the earlier project shrank these images with its in-memory cache (module docstring).

    ``cache_mode`` as recorded (``summary.json`` / ``cv_summary.json``; None
    = its default ``none``); ``image_paths`` the set the cache served (a
    run's validation images).
    """
    mode = str(cache_mode or "none").strip().lower()
    if mode == "auto":
        paths = [str(p) for p in image_paths]
        has_dicom = any(p.lower().endswith(PIPELINES_DICOM_SUFFIXES) for p in paths)
        return bool(paths) and not has_dicom and len(paths) <= MEMORY_CACHE_MAX
    return mode == "memory"


def read_pipelines_image(path: str | Path, thumbnail_to: int | None = None) -> np.ndarray:
    """Read an image file as the earlier project did: uint8, dense tissue bright.

    Parameters
    ----------
    path : a DICOM, PNG, JPEG or TIFF file.
    thumbnail_to : shrink the RGB image with ``Image.thumbnail((n, n),
        BICUBIC)`` when its longer side exceeds ``n`` (the in-memory cache's
        step, module docstring); None: never.

    Returns
    -------
    np.ndarray
        uint8 (H, W) for grayscale content, or (H, W, 3) for a raster whose
        colour channels differ (the earlier project fed them as they were).

    Raises
    ------
    ImageReadError
        Missing, unreadable or unsupported file; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        what = "file not found" if not path.exists() else "is not a file"
        raise ImageReadError(f"{path}: {what}; check the image path")
    fmt = sniff_format(path)
    if fmt == "dicom":
        image = _dicom_uint8(path)
    elif fmt in ("png", "jpeg", "tiff"):
        image = _raster_rgb(path)
    else:
        raise ImageReadError(f"{path}: not a DICOM, PNG, JPEG or TIFF file (unrecognised content)")
    return _thumbnail(image, thumbnail_to) if thumbnail_to else image


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """Pillow's thumbnail of the RGB image, as the earlier project's memory cache made it."""
    rgb = Image.merge("RGB", [Image.fromarray(image)] * 3) if image.ndim == 2 else Image.fromarray(image, "RGB")
    if max(rgb.size) > size:
        rgb.thumbnail((size, size), Image.BICUBIC)
    return _single_channel_if_grey(np.asarray(rgb))


def _dicom_uint8(path: Path) -> np.ndarray:
    from mammography.io.dicom import decode_dicom

    ds, stored = decode_dicom(path)
    values = stored.astype(np.float32, copy=False)
    try:
        slope = float(ds.get("RescaleSlope", 1.0))
        intercept = float(ds.get("RescaleIntercept", 0.0))
    except (TypeError, ValueError) as exc:
        raise ImageReadError(f"{path}: invalid Rescale Slope/Intercept ({exc}); fix the header") from None
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise ImageReadError(f"{path}: Rescale Slope/Intercept are not finite numbers; fix the header")
    # python floats keep the float32 array float32, as in the earlier code
    values = values * slope + intercept
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        values = values.max() - values
    return _window_uint8(values)


def _window_uint8(values: np.ndarray) -> np.ndarray:
    """Steps 4 and 5 of the module docstring, in the earlier code's dtypes."""
    lo, hi = np.percentile(values, PIPELINES_PERCENTILES)
    if hi <= lo:
        lo, hi = values.min(), values.max()
        if hi <= lo:
            return np.zeros(values.shape, dtype=np.uint8)
    unit = (np.clip(values, lo, hi) - lo) / (hi - lo)
    return (unit * 255.0).clip(0, 255).astype(np.uint8)


def _raster_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            check_dimensions(path, im.size[1], im.size[0])
            rgb = np.asarray(im.convert("RGB"))
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(
            f"{path}: cannot decode the image ({' '.join(str(exc).split())}); export it again"
        ) from None
    return _single_channel_if_grey(rgb)


def _single_channel_if_grey(rgb: np.ndarray) -> np.ndarray:
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., 0])
    return np.ascontiguousarray(rgb)
