"""Read PNG, JPEG and TIFF mammograms (8 or 16 bit) into a Mammogram.

Raster exports carry no display window, so one rule decides how stored values
become [0, 1] (``Mammogram.intensity_rule``):

* 8-bit images are already rendered for display: divided by 255
  ('bit_depth');
* 16-bit images that use the top bit (maximum >= 32768) are full-range
  renderings: divided by 65535 ('bit_depth');
* 16-bit images whose values fit in 15 bits are raw 10-15-bit detector values
  in a 16-bit container (the usual export of 12- or 14-bit mammograms);
  dividing them by 65535 would give an almost black image, so they are
  windowed by robust percentiles (0.5 % of the image, 99.6 % of the breast:
  'breast_percentiles'), as a DICOM file without a window is; so are other
  integer types;
* floating-point TIFFs are kept when already in [0, 1], else scaled by their
  own min/max ('range').

Rasters are taken to show dense tissue bright (MONOCHROME2), except TIFFs
marked min-is-white, which are inverted like DICOM MONOCHROME1. Colour images
become luminance (ITU-R BT.601 weights: 0.299 R + 0.587 G + 0.114 B).
Laterality and view come from the file and folder names when they carry
them (``Mass-Test_P_00012_RIGHT_MLO.png``, ``..._L_CC.jpg``); pixel spacing
is unknown (None): a PNG's dpi is a display hint, not the detector pitch.

PNG and JPEG are decoded by Pillow, TIFF by tifffile (16-bit, planar and
compressed TIFFs included).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from mammography.errors import ImageReadError
from mammography.io.mammogram import Mammogram, check_dimensions, sniff_format
from mammography.io.orientation import orientation_from_path
from mammography.io.window import window_without_display

__all__ = ["read_raster", "raster_to_unit"]

_LUMA = np.array([0.299, 0.587, 0.114])
_GRAY_MODES = {"L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def read_raster(path: str | Path, fmt: str | None = None, *, percentile_window: str = "breast") -> Mammogram:
    """Read a PNG, JPEG or TIFF image as a mammogram.

    Parameters
    ----------
    path : str or Path
        The image file.
    fmt : {'png', 'jpeg', 'tiff'}, optional
        The format, when the caller has already recognised it; recognised
        from the file's first bytes otherwise.

    Returns
    -------
    Mammogram
        float32 pixels in [0, 1]; laterality and view from name tokens (else
        None); pixel spacing None.

    Raises
    ------
    ImageReadError
        Unreadable, truncated, multi-page, palette/CMYK TIFF, or implausible
        size; the message names the file.
    """
    path = Path(path)
    fmt = fmt or sniff_format(path)
    if fmt == "tiff":
        values, photometric = _load_tiff(path)
    elif fmt in ("png", "jpeg"):
        values, photometric = _load_pillow(path)
    else:
        raise ImageReadError(f"{path}: not a PNG, JPEG or TIFF file; convert it to one of these formats")
    pixels, rule = raster_to_unit(values, monochrome1=photometric == "MONOCHROME1", percentile_window=percentile_window)
    if photometric == "MONOCHROME1":
        pixels = np.subtract(1.0, pixels, dtype=np.float32)
    laterality, view = orientation_from_path(path)
    return Mammogram(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        original_shape=(int(pixels.shape[0]), int(pixels.shape[1])),
        pixel_spacing=None,
        laterality=laterality.value,
        view=view.value,
        photometric_interpretation=photometric,
        path=path,
        intensity_rule=rule,
        laterality_source=laterality.source,
        view_source=view.source,
    )


def raster_to_unit(values: np.ndarray, *, monochrome1: bool = False,
                   percentile_window: str = "breast") -> tuple[np.ndarray, str]:
    """Scale a 2-D raster to float32 [0, 1] with the module's bit-depth rule.

    Parameters
    ----------
    values : np.ndarray
        2-D array: uint8, uint16 (or another integer type) or float.
    monochrome1 : the raster shows dense tissue dark (inverted afterwards by
        the caller); the percentile window then finds the breast inverted.

    Returns
    -------
    (pixels, rule) with rule 'bit_depth', 'breast_percentiles' (or
    'percentiles' when no breast is found) or 'range'.
    """
    if values.dtype == np.bool_:
        return values.astype(np.float32), "bit_depth"
    if values.dtype == np.uint8:
        return values.astype(np.float32) / np.float32(255), "bit_depth"
    if np.issubdtype(values.dtype, np.integer):
        lo, hi = int(values.min()), int(values.max())
        if values.dtype.itemsize <= 2 and lo >= 0 and hi >= 32768:
            return values.astype(np.float32) / np.float32(65535), "bit_depth"
        return window_without_display(values, monochrome1=monochrome1, percentile_window=percentile_window)
    x = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0.0 and hi <= 1.0:
        return x, "range"
    if not hi > lo:
        return np.zeros_like(x), "range"
    return (x - np.float32(lo)) / np.float32(hi - lo), "range"


def _load_pillow(path: Path) -> tuple[np.ndarray, str]:
    """Decode a PNG or JPEG with Pillow into a 2-D array and its photometric name."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            check_dimensions(path, height, width)
            if getattr(im, "n_frames", 1) > 1:
                raise ImageReadError(
                    f"{path}: holds {im.n_frames} frames (animated image); save the mammogram as a single image"
                )
            im.load()
            return _pillow_to_array(im)
    except ImageReadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{path}: not a readable PNG/JPEG image; check the file or export it again") from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: image too large to decode safely ({exc}); downsample it first") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(
            f"{path}: cannot decode the image ({' '.join(str(exc).split())}); the file is truncated or corrupt, "
            "export it again"
        ) from exc


def _pillow_to_array(im: Image.Image) -> tuple[np.ndarray, str]:
    mode = im.mode
    if mode in _GRAY_MODES:
        arr = np.asarray(im)
        if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            # Pillow may open 16-bit grayscale as 32-bit 'I'; keep it 16-bit.
            arr = arr.astype(np.uint16)
        return arr.astype(arr.dtype.newbyteorder("=")), "MONOCHROME2"
    if mode == "1":
        return np.asarray(im.convert("L")), "MONOCHROME2"
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel(0)), "MONOCHROME2"
    # RGB, RGBA, P, CMYK, YCbCr: Pillow's 'L' conversion uses the BT.601 weights.
    return np.asarray(im.convert("RGB").convert("L")), "RGB"


def _load_tiff(path: Path) -> tuple[np.ndarray, str]:
    """Decode the single full-resolution page of a TIFF with tifffile."""
    try:
        with tifffile.TiffFile(path) as tif:
            pages = [p for p in tif.pages if not getattr(p, "is_reduced", False)]
            if len(pages) != 1:
                raise ImageReadError(
                    f"{path}: holds {len(pages)} full-resolution pages; save one mammogram per TIFF file"
                )
            page = pages[0]
            check_dimensions(path, int(page.imagelength), int(page.imagewidth))
            photometric = int(page.photometric)
            if photometric not in (
                tifffile.PHOTOMETRIC.MINISBLACK,
                tifffile.PHOTOMETRIC.MINISWHITE,
                tifffile.PHOTOMETRIC.RGB,
            ):
                raise ImageReadError(
                    f"{path}: TIFF photometric {tifffile.PHOTOMETRIC(photometric).name} is not supported; "
                    "save the image as grayscale (or RGB)"
                )
            arr = page.asarray()
            separate = int(page.planarconfig) == int(tifffile.PLANARCONFIG.SEPARATE)
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, OSError ...
        raise ImageReadError(
            f"{path}: cannot decode the TIFF ({' '.join(str(exc).split())}); the file is truncated or corrupt, "
            "export it again"
        ) from exc
    if photometric == tifffile.PHOTOMETRIC.RGB:
        if separate:
            arr = np.moveaxis(arr, 0, -1)
        return _luminance(arr[..., :3]), "RGB"
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: TIFF page has shape {arr.shape}, not a 2-D grayscale image")
    name = "MONOCHROME1" if photometric == tifffile.PHOTOMETRIC.MINISWHITE else "MONOCHROME2"
    return arr, name


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (H, W, 3) array, kept in the input's integer type."""
    luma = rgb.astype(np.float64) @ _LUMA
    if np.issubdtype(rgb.dtype, np.integer):
        info = np.iinfo(rgb.dtype)
        return np.clip(np.rint(luma), info.min, info.max).astype(rgb.dtype)
    return luma
