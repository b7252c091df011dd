"""The :class:`Mammogram` record, and what every reader checks first.

Every reader in :mod:`mammography.io` returns a :class:`Mammogram`: float32
pixels in [0, 1] with dense tissue bright, plus the acquisition facts later
layers need (pixel spacing, laterality, view). This module also holds what
the readers share before any pixel is decoded: the file-format sniffing
(:func:`sniff_format`) and the image-size limits (:func:`check_dimensions`).
It imports no other reading module: :mod:`mammography.io.read` (the one
reader, :func:`~mammography.io.read.read_mammogram`), the DICOM and raster
readers and the windows (:mod:`mammography.io.window`) build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammography.errors import ImageReadError

__all__ = [
    "Mammogram",
    "sniff_format",
    "check_dimensions",
    "looks_like_bare_dicom",
    "MIN_SIDE",
    "MAX_SIDE",
    "MAX_PIXELS",
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
