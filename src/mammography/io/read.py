"""The one reader: :func:`read_mammogram` for DICOM, PNG, JPEG and TIFF files.

It looks at a file's first bytes (not only its name) to pick the DICOM
(:mod:`mammography.io.dicom`) or raster (:mod:`mammography.io.raster`) reader.
"""

from __future__ import annotations

from pathlib import Path

from mammography.errors import ImageReadError
from mammography.io.dicom import read_dicom
from mammography.io.files import require_regular_file
from mammography.io.mammogram import Mammogram, sniff_format
from mammography.io.raster import read_raster
from mammography.io.window import check_percentile_window

__all__ = ["read_mammogram"]


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
        (:func:`~mammography.io.window.window_without_display`): ``"breast"`` (the default, 0.5 %
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
    # before anything opens it: a FIFO or device would block or never end, a NUL byte cannot be opened
    require_regular_file(path, "image", ImageReadError,
                         "give the path of an image file (and check --dicom-root for manifests)")
    path = Path(path)
    fmt = sniff_format(path)
    check_percentile_window(percentile_window)
    if fmt == "dicom":
        return read_dicom(path, percentile_window=percentile_window)
    if fmt in ("png", "jpeg", "tiff"):
        return read_raster(path, fmt, percentile_window=percentile_window)
    raise ImageReadError(
        f"{path}: not a DICOM, PNG, JPEG or TIFF file (unrecognised content); "
        "convert it to one of these formats"
    )
