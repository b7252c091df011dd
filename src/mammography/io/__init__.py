"""Reading mammograms and placing them into the model input.

* :func:`read_mammogram` reads DICOM (uncompressed, JPEG, JPEG-LS, JPEG 2000,
  RLE), PNG, JPEG and TIFF files into a :class:`Mammogram` (float32 [0, 1],
  dense tissue bright, with pixel spacing, laterality and view);
* :func:`prepare_input` fits it into the square model input and returns the
  :class:`Geometry` that maps heatmaps back onto the original pixels;
* :func:`breast_mask` segments the breast without burned-in labels.

Errors a user's file can cause raise :class:`~mammography.errors.ImageReadError`.
"""

from mammography.io.geometry import Geometry, compute_geometry, fit_to_square
from mammography.io.mammogram import Mammogram, read_mammogram
from mammography.io.mask import breast_mask
from mammography.io.prepare import prepare_input

__all__ = [
    "Geometry",
    "Mammogram",
    "breast_mask",
    "compute_geometry",
    "fit_to_square",
    "prepare_input",
    "read_mammogram",
]
