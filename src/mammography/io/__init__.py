"""Reading mammograms and placing them into the model input.

* :func:`read_mammogram` reads DICOM (uncompressed, JPEG, JPEG-LS, JPEG 2000,
  RLE), PNG, JPEG and TIFF files into a :class:`Mammogram` (float32 [0, 1],
  dense tissue bright, with pixel spacing, laterality and view);
* :func:`prepare_input` fits it into the square model input and returns the
  :class:`Geometry` that maps heatmaps back onto the original pixels;
* :func:`breast_mask` segments the breast without burned-in labels and
  film-edge strips (:func:`segment_breast` also returns the strips and the
  chest-wall side), :func:`pectoral_mask` the pectoral muscle of an MLO view;
* :func:`resolve_laterality` / :func:`resolve_view` (and
  :func:`with_orientation`) give every image a laterality and view with its
  source (manifest, header tags, PatientID and name tokens, the image).

Errors a user's file can cause raise :class:`~mammography.errors.ImageReadError`.
"""

from mammography.io.geometry import Geometry, compute_geometry, fit_to_square
from mammography.io.mammogram import Mammogram
from mammography.io.mask import BreastSegmentation, breast_mask, film_edge_mask, pectoral_mask, segment_breast
from mammography.io.orientation import Resolved, resolve_laterality, resolve_view, with_orientation
from mammography.io.prepare import prepare_input
from mammography.io.read import read_mammogram

__all__ = [
    "BreastSegmentation",
    "Geometry",
    "Mammogram",
    "Resolved",
    "breast_mask",
    "compute_geometry",
    "film_edge_mask",
    "fit_to_square",
    "pectoral_mask",
    "prepare_input",
    "read_mammogram",
    "resolve_laterality",
    "resolve_view",
    "segment_breast",
    "with_orientation",
]
