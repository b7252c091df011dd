"""The :class:`Mammogram` record and :func:`read_mammogram`, the one reader.

Every reader in :mod:`mammography.io` returns a :class:`Mammogram`: float32
pixels in [0, 1] with dense tissue bright, plus the acquisition facts later
layers need (pixel spacing, laterality, view). :func:`read_mammogram` looks at
a file's first bytes (not only its name) to pick the DICOM or raster reader.

This module also holds the checks and the intensity rules that both readers
share: the image-size limits and the robust-percentile windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammography.errors import ConfigError, ImageReadError

__all__ = [
    "Mammogram",
    "read_mammogram",
    "sniff_format",
    "check_dimensions",
    "window_percentiles",
    "window_breast_percentiles",
    "window_without_display",
    "PERCENTILE_WINDOWS",
    "MIN_SIDE",
    "MAX_SIDE",
    "MAX_PIXELS",
    "PERCENTILES",
    "BREAST_PERCENTILES",
]

#: Smallest accepted image side in pixels; anything smaller is a thumbnail,
#: an icon or a corrupt header, never a mammogram.
MIN_SIDE = 16
#: Largest accepted image side; full-field detectors are about 4000 x 3300.
MAX_SIDE = 20_000
#: Largest accepted pixel count, checked from the header before decoding: 50
#: megapixels. The largest detectors have 4096 x 5120 (21 MP) and film scanned
#: at 42 um about 5700 x 7100 (40 MP); reading an RLE image at the cap peaks
#: near 0.9 GB (bench/bench_hostile_inputs.py), so a crafted header cannot claim more.
MAX_PIXELS = 50_000_000
#: Robust percentiles (low, high) used when a file carries no display window.
PERCENTILES = (0.5, 99.5)
#: Percentiles (image low, breast high) of the window for files without one
#: (:func:`window_breast_percentiles`). 99.6 rather than 99.5 inside the
#: breast: the mask errs outwards by a pixel or two into the film base (1-2 %
#: of its area on digitised film), which would dilute the breast's share and
#: let a little more than 0.5 % of the true breast saturate.
BREAST_PERCENTILES = (0.5, 99.6)
#: the rules :func:`window_without_display` knows
PERCENTILE_WINDOWS = ("breast", "image")
#: Percentiles are estimated on at most about this many pixels (a regular
#: subsample); at full-field size this keeps the estimate under ~20 ms.
_PERCENTILE_SAMPLES = 1_000_000

_DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}


@dataclass
class Mammogram:
    """A mammogram ready for display and model input.

    Attributes
    ----------
    pixels : np.ndarray
        float32 (H, W) in [0, 1]; dense tissue is bright whatever the file's
        photometric interpretation.
    original_shape : tuple of int
        (H, W) of the stored image (equal to ``pixels.shape``).
    pixel_spacing : tuple of float or None
        (row, column) spacing in mm from DICOM PixelSpacing, else
        ImagerPixelSpacing; None when unknown (always for rasters).
    laterality : {'L', 'R'} or None
        What the file says, first found of: DICOM ImageLaterality, the
        series' Laterality, tokens of the PatientID (``..._RIGHT_MLO``), of
        the file name, of its folders' names (``LEFT``/``RIGHT``, or
        ``L``/``R`` with a view: ``L_CC``, ``RMLO``); None when nothing says
        it (:func:`mammography.io.resolve_laterality` adds the manifest and
        the image itself).
    view : {'CC', 'MLO', 'ML', 'LM'} or None
        Likewise: DICOM ViewPosition, a PatientOrientation that literally
        holds a view (digitised-film archives misuse it so), then PatientID,
        file and folder name tokens.
    photometric_interpretation : str
        As stored: 'MONOCHROME1' (inverted on reading), 'MONOCHROME2', or for
        rasters 'MONOCHROME2' / 'MONOCHROME1' (TIFF min-is-white) / 'RGB'
        (converted to luminance).
    path : Path
        The file that was read.
    intensity_rule : str
        How stored values became [0, 1]: 'voi_lut' (DICOM VOI LUT Sequence),
        'window' (Window Center/Width), 'breast_percentiles' (no window in
        the file: :func:`window_breast_percentiles`), 'bit_depth' (raster
        divided by its bit-depth maximum) or 'range' (float raster scaled by
        its own min/max, or kept when already in [0, 1]).
    laterality_source, view_source : str or None
        Where ``laterality`` / ``view`` came from: 'ImageLaterality',
        'Laterality', 'ViewPosition', 'PatientOrientation', 'PatientID',
        'file name', 'folder name' (and, once resolved, 'manifest' or
        'image'); None when the value is None.
    """

    pixels: np.ndarray
    original_shape: tuple[int, int]
    pixel_spacing: tuple[float, float] | None
    laterality: str | None
    view: str | None
    photometric_interpretation: str
    path: Path
    intensity_rule: str = ""
    laterality_source: str | None = None
    view_source: str | None = None


def read_mammogram(path: str | Path, *, percentile_window: str = "breast") -> Mammogram:
    """Read a DICOM, PNG, JPEG or TIFF mammogram.

    Parameters
    ----------
    path : str or Path
        The image file. The format is recognised from the file's first bytes
        (DICOM 'DICM' preamble or a bare DICOM data set, PNG, JPEG and TIFF
        signatures), so names without an extension work; a file whose
        content is not recognised but whose name ends in .dcm/.dicom is read
        as DICOM so that the DICOM reader can say what is wrong with it.
    percentile_window : how a file without a display window is windowed
        (:func:`window_without_display`): ``"breast"`` (the default, 0.5 %
        of the image to 99.6 % of the breast) or ``"image"`` (the whole
        image's 0.5/99.5 %, the rule runs of preprocessing version 1 were
        trained with).

    Returns
    -------
    Mammogram

    Raises
    ------
    ImageReadError
        The file is missing, not an image of a supported kind, or not a
        readable single-frame grayscale mammogram; the message names the
        file and what to do.
    """
    # Imported here because both readers import Mammogram from this module.
    from mammography.io.dicom import read_dicom
    from mammography.io.raster import read_raster

    from mammography.io.files import require_regular_file

    # before anything opens it: a FIFO or device would block or never end, a NUL byte cannot be opened
    require_regular_file(path, "image", ImageReadError,
                         "give the path of an image file (and check --dicom-root for manifests)")
    path = Path(path)
    fmt = sniff_format(path)
    if percentile_window not in PERCENTILE_WINDOWS:
        raise ConfigError(f"percentile_window must be one of {', '.join(PERCENTILE_WINDOWS)}, got {percentile_window!r}")
    if fmt == "dicom":
        return read_dicom(path, percentile_window=percentile_window)
    if fmt in ("png", "jpeg", "tiff"):
        return read_raster(path, fmt, percentile_window=percentile_window)
    raise ImageReadError(
        f"{path}: not a DICOM, PNG, JPEG or TIFF file (unrecognised content); "
        "convert it to one of these formats"
    )


def sniff_format(path: str | Path) -> str | None:
    """Recognise an image file from its first bytes.

    Returns
    -------
    'dicom', 'png', 'jpeg', 'tiff' or None.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot be opened ({exc.strerror or exc}); check its permissions") from exc
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if looks_like_bare_dicom(head) or path.suffix.lower() in _DICOM_SUFFIXES:
        return "dicom"
    return None


def looks_like_bare_dicom(head: bytes) -> bool:
    """True when ``head`` starts like a DICOM data set written without preamble.

    Old archives hold data sets without the 128-byte preamble and 'DICM'
    marker. Such a file starts with a little-endian tag of group 0x0002 (file
    meta) or 0x0008 (identifying module) with a small element number.
    """
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    element = int.from_bytes(head[2:4], "little")
    return group in (0x0002, 0x0008) and element < 0x0100


def check_dimensions(path: Path, rows: int, cols: int) -> None:
    """Refuse image sizes no mammogram has, before any pixel is decoded.

    Raises
    ------
    ImageReadError
        When a side is below :data:`MIN_SIDE` or above :data:`MAX_SIDE`, or
        the pixel count exceeds :data:`MAX_PIXELS`.
    """
    if not (MIN_SIDE <= rows <= MAX_SIDE and MIN_SIDE <= cols <= MAX_SIDE) or rows * cols > MAX_PIXELS:
        raise ImageReadError(
            f"{path}: implausible image size {rows} x {cols} pixels (accepted: sides "
            f"{MIN_SIDE}..{MAX_SIDE}, at most {MAX_PIXELS // 1_000_000} megapixels); "
            "the header is corrupt or this is not a mammogram"
        )


def window_percentiles(values: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Map values to [0, 1] between two robust percentiles.

    Used when a file says nothing about display (no VOI LUT, no window, or
    raw detector values in a raster). The low/high percentiles (default
    0.5/99.5) ignore a few extreme pixels (dead pixels, burned-in labels).

    Parameters
    ----------
    values : np.ndarray
        2-D array of any real dtype.
    percentiles : (low, high)
        Percentiles in 0..100.

    Returns
    -------
    float32 array of the same shape in [0, 1]; all zeros for a constant image.
    """
    step = max(1, int(np.ceil(np.sqrt(values.size / _PERCENTILE_SAMPLES))))
    sample = values[::step, ::step] if values.ndim == 2 else values.reshape(-1)[::step * step]
    lo, hi = np.percentile(sample, percentiles)
    out = np.asarray(values, dtype=np.float32)
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.float32)
    out = (out - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def window_breast_percentiles(
    values: np.ndarray, percentiles: tuple[float, float] = BREAST_PERCENTILES, *, monochrome1: bool = False
) -> tuple[np.ndarray, str]:
    """Map values to [0, 1]: low percentile of the image, high percentile *inside the breast*.

    The rule for files that carry no display window. A window from the
    whole image's percentiles depends on how much background, film edge and
    label the image holds: on a digitised film (half of it background, with
    bright strips and labels about as bright as the densest tissue) its high
    end lands inside the breast's range and saturates up to a few percent of
    the breast, exactly the densest tissue. Here the breast is segmented on
    the whole-image window first (:func:`mammography.io.mask.breast_mask`,
    which leaves film-edge strips and labels out), then the high percentile
    is taken over the breast's pixels alone, so at most ``100 - high`` percent
    of the breast saturates; the low percentile stays the image's (the
    background stays black and the faint periphery above it).

    Parameters
    ----------
    values : 2-D array of any real dtype.
    percentiles : (low, high) in 0..100.
    monochrome1 : the values show dense tissue dark (DICOM MONOCHROME1, TIFF
        min-is-white; the caller inverts the result): the breast is found in
        the inverted image and the roles of the ends swap (the dense end is
        the low percentile inside the breast, the background end the
        image's high percentile).

    Returns
    -------
    (pixels, rule): float32 [0, 1] (not inverted) and
    ``'breast_percentiles'``, or the whole-image window and ``'percentiles'``
    when no breast is found (less than 1 % of the image) or the breast is flat.
    """
    from mammography.io.mask import breast_mask

    whole = window_percentiles(values, percentiles)
    breast = breast_mask(1.0 - whole if monochrome1 else whole)
    if breast.sum() < 0.01 * breast.size:
        return whole, "percentiles"
    low, high = percentiles
    step = max(1, int(np.ceil(np.sqrt(values.size / _PERCENTILE_SAMPLES))))
    image = np.asarray(values)[::step, ::step]
    inside = np.asarray(values)[breast]
    inside = inside[:: max(1, inside.size // _PERCENTILE_SAMPLES)]
    if monochrome1:
        lo, hi = float(np.percentile(inside, 100.0 - high, method="lower")), float(np.percentile(image, 100.0 - low))
    else:
        lo, hi = float(np.percentile(image, low)), float(np.percentile(inside, high, method="higher"))
    if not hi > lo:
        return whole, "percentiles"
    out = (np.asarray(values, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out), "breast_percentiles"


def window_without_display(values: np.ndarray, *, monochrome1: bool = False,
                           percentile_window: str = "breast") -> tuple[np.ndarray, str]:
    """The window of a file that says nothing about display: ``(pixels, rule)``.

    ``"breast"``: :func:`window_breast_percentiles`; ``"image"``: the whole
    image's robust percentiles (:func:`window_percentiles`, rule
    ``'percentiles'``), the rule of runs trained with preprocessing version 1.
    """
    if percentile_window == "image":
        return window_percentiles(values), "percentiles"
    return window_breast_percentiles(values, monochrome1=monochrome1)
