"""Facts about an image that belong to the image, not to a run: breast, pectoral muscle, markers, film edges, ROI.

Every run that uses an image -- three seeds on one split, the folds of a
cross-validation, this project's fit-pad runs and the earlier project's
centre-cropped ones -- must measure its attention against the *same* masks.
So they are found once, on the image itself, never on a run's model input:

1. the file is read with :func:`mammography.io.read_mammogram` (this
   project's reading rules, whatever rules a run was trained with) and its
   view resolved (:func:`mammography.io.resolve_view`);
   :func:`facts_from_mammogram` starts here with a file already read so (the
   archive job reads each file once for the facts and the fit-pad runs' input);
2. it is resampled, antialiased, onto its **analysis grid**: original
   orientation, longer side ``analysis_size`` px
   (:func:`~mammography.analysis.maps.grid_shape`);
3. on that grid: the breast (:func:`mammography.io.segment_breast`, or the
   ``breast_mask_path`` PNG when one is given), burned-in markers and
   film-edge strips (:func:`~mammography.analysis.spurious.find_burned_in`,
   plus a known ``artifact_bbox``), the pectoral muscle of MLO views
   (:func:`mammography.io.pectoral_mask`), the dense-tissue estimate without
   it (:func:`~mammography.analysis.patterns.estimate_dense_tissue`) and the
   expert ROI when a mask file is given.

:class:`ImageFacts` holds them; :meth:`ImageFacts.in_model` maps them into a
run's model square through that run's :class:`~mammography.io.geometry.Geometry`
(mirrored, padded or centre-cropped as the model saw the image), which is
where the marker occlusion paints and the randomisation check compares.
:mod:`mammography.analysis.store` computes each image's facts once and keeps
them on disk beside the decoded-image cache.

:class:`ImageRegions` is the part a written analysis keeps (breast, markers,
film edges, bit-packed): what the figures and the explorer draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from mammography.analysis.maps import grid_shape, resize_mask, resize_mask_any
from mammography.errors import ConfigError
from mammography.io.geometry import Geometry, compute_geometry

__all__ = [
    "FACTS_VERSION",
    "FACTS_WINDOW",
    "FactSources",
    "ImageFacts",
    "ImageRegions",
    "ModelMasks",
    "compute_image_facts",
    "facts_from_mammogram",
    "is_missing",
    "mask_on_grid",
]

#: version of the rules above; a change to them (or to the mask code they call) bumps it, so cached facts
#: made by other rules are never reused
FACTS_VERSION = "1"
#: how the facts read an image: this project's display rule (``read_mammogram``'s ``percentile_window``)
FACTS_WINDOW = "breast"


def is_missing(value) -> bool:
    """True for an empty table cell (None, NaN, ``""``, ``"nan"``)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in ("", "nan")


@dataclass(frozen=True)
class FactSources:
    """What a user supplied about an image besides its pixels (a run's predictions or a manifest).

    Attributes
    ----------
    breast_mask_path : PNG of the breast mask at original resolution (replaces the segmentation).
    artifact_bbox : ``(r0, c0, r1, c1)`` of a known artefact in original pixels (added to the markers).
    roi_path : PNG of the expert's region of interest at original resolution.
    """

    breast_mask_path: str | None = None
    artifact_bbox: tuple[int, int, int, int] | None = None
    roi_path: str | None = None

    @classmethod
    def from_cells(cls, breast_mask_path=None, artifact_bbox=None, roi_path=None) -> "FactSources":
        """From table cells (empty cells are None; the box is parsed, :func:`~mammography.analysis.spurious.parse_bbox`)."""
        from mammography.analysis.spurious import parse_bbox

        return cls(
            None if is_missing(breast_mask_path) else str(breast_mask_path),
            None if is_missing(artifact_bbox) else parse_bbox(artifact_bbox),
            None if is_missing(roi_path) else str(roi_path),
        )


@dataclass(frozen=True)
class ImageRegions:
    """The masks of one image on its analysis grid (stored bit-packed).

    Attributes
    ----------
    shape : (h, w) of the grid.
    breast_bits, marker_bits : ``numpy.packbits`` of the flattened masks.
    n_markers : marker regions found (detected, plus 1 for a known artefact box).
    film_edge_bits : packed film-edge strips, None when the image has none.
    n_film_edges : film-edge strips found.
    """

    shape: tuple[int, int]
    breast_bits: np.ndarray
    marker_bits: np.ndarray
    n_markers: int = 0
    film_edge_bits: np.ndarray | None = None
    n_film_edges: int = 0

    @classmethod
    def from_masks(cls, breast: np.ndarray, markers: np.ndarray, n_markers: int,
                   film_edges: np.ndarray | None = None, n_film_edges: int = 0) -> "ImageRegions":
        edges = None if film_edges is None or not film_edges.any() else np.packbits(film_edges.ravel())
        return cls(tuple(breast.shape), np.packbits(breast.ravel()), np.packbits(markers.ravel()), int(n_markers),
                   edges, int(n_film_edges))

    def _unpack(self, bits: np.ndarray, shape=None) -> np.ndarray:
        n = self.shape[0] * self.shape[1]
        m = np.unpackbits(bits, count=n).astype(bool).reshape(self.shape)
        return m if shape is None or tuple(shape) == self.shape else resize_mask(m, shape)

    def breast(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Breast mask (resampled to ``shape`` when given)."""
        return self._unpack(self.breast_bits, shape)

    def markers(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Marker mask (resampled to ``shape`` when given, any overlap kept)."""
        m = self._unpack(self.marker_bits)
        return m if shape is None or tuple(shape) == self.shape else resize_mask_any(m, shape)

    def film_edges(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Film-edge strip mask (all False without strips; resampled to ``shape`` when given)."""
        if self.film_edge_bits is None:
            return np.zeros(self.shape if shape is None else tuple(shape), dtype=bool)
        m = self._unpack(self.film_edge_bits)
        return m if shape is None or tuple(shape) == self.shape else resize_mask_any(m, shape)


@dataclass(frozen=True)
class ModelMasks:
    """An image's facts in one run's model square (bool (S, S) each), as that model saw the image.

    Attributes
    ----------
    breast, markers, film_edges : the masks mirrored, resized and padded or
        cropped like the image (markers and strips keep every pixel they touch).
    image_area : the square's pixels that show the image (not padding).
    """

    breast: np.ndarray
    markers: np.ndarray
    film_edges: np.ndarray
    image_area: np.ndarray

    def occlusion(self) -> np.ndarray:
        """The markers grown by one pixel (covers the resampling halo): what the occlusion paints."""
        return ndimage.binary_dilation(self.markers, iterations=1) if self.markers.any() else self.markers

    def background(self, square: np.ndarray) -> float:
        """The image's background level in the run's own intensities: median of ``square`` over the image
        area outside the breast, the markers and the film edges (0 when nothing is left)."""
        rest = self.image_area & ~(self.breast | self.markers | self.film_edges)
        return float(np.median(np.asarray(square)[rest])) if rest.any() else 0.0


@dataclass(frozen=True, eq=False)
class ImageFacts:
    """What :func:`compute_image_facts` found in one image (bool masks on its analysis grid).

    Attributes
    ----------
    original_shape : (H, W) of the file's pixels.
    breast : breast mask; ``breast_source`` says where it came from (``"file"`` or ``"segmented"``).
    markers, n_markers : burned-in markers (detected, plus a known artefact box) and their number.
    film_edges, n_film_edges : film-edge strips and their number.
    pectoral : the pectoral muscle (all False unless an MLO view shows one).
    dense_estimate : breast pixels above Otsu's threshold, the muscle left out.
    roi : the expert's region, or None without a mask file.
    view, view_source : the image's view and where it came from (:func:`mammography.io.resolve_view`).
    """

    original_shape: tuple[int, int]
    breast: np.ndarray
    markers: np.ndarray
    n_markers: int
    film_edges: np.ndarray
    n_film_edges: int
    pectoral: np.ndarray
    dense_estimate: np.ndarray
    roi: np.ndarray | None = None
    view: str | None = None
    view_source: str | None = None
    breast_source: str = "segmented"

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of the analysis grid."""
        return tuple(self.breast.shape)

    def regions(self) -> ImageRegions:
        """The masks a written analysis keeps."""
        return ImageRegions.from_masks(self.breast, self.markers, self.n_markers, self.film_edges, self.n_film_edges)

    def in_model(self, geometry: Geometry) -> ModelMasks:
        """The facts as the model of a run with this image ``geometry`` saw them (see :class:`ModelMasks`)."""
        frame = tuple(geometry.resized_shape)

        def place(mask: np.ndarray, keep_touching: bool) -> np.ndarray:
            resized = (resize_mask_any if keep_touching else resize_mask)(mask, frame)
            return geometry.place_resized(resized)

        return ModelMasks(place(self.breast, False), place(self.markers, True), place(self.film_edges, True),
                          geometry.image_area())

    # -- storage ------------------------------------------------------------------
    _MASKS = ("breast", "markers", "film_edges", "pectoral", "dense_estimate")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named arrays for an ``.npz`` entry (masks bit-packed)."""
        arrays = {f"{name}_bits": np.packbits(getattr(self, name).ravel()) for name in self._MASKS}
        if self.roi is not None:
            arrays["roi_bits"] = np.packbits(self.roi.ravel())
        arrays["shapes"] = np.asarray([self.original_shape, self.shape], dtype=np.int64)
        arrays["counts"] = np.asarray([self.n_markers, self.n_film_edges], dtype=np.int64)
        arrays["text"] = np.asarray([self.view or "", self.view_source or "", self.breast_source], dtype=np.str_)
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> "ImageFacts":
        """Inverse of :meth:`to_arrays`."""
        (H, W), (h, w) = (tuple(int(v) for v in row) for row in arrays["shapes"])

        def unpack(key: str) -> np.ndarray:
            return np.unpackbits(arrays[key], count=h * w).astype(bool).reshape(h, w)

        view, view_source, breast_source = (str(v) for v in arrays["text"])
        n_markers, n_edges = (int(v) for v in arrays["counts"])
        return cls(
            original_shape=(H, W),
            breast=unpack("breast_bits"),
            markers=unpack("markers_bits"),
            n_markers=n_markers,
            film_edges=unpack("film_edges_bits"),
            n_film_edges=n_edges,
            pectoral=unpack("pectoral_bits"),
            dense_estimate=unpack("dense_estimate_bits"),
            roi=unpack("roi_bits") if "roi_bits" in arrays else None,
            view=view or None,
            view_source=view_source or None,
            breast_source=breast_source,
        )


def mask_on_grid(mask: np.ndarray, original_shape: tuple[int, int], grid: tuple[int, int], path, what: str) -> np.ndarray:
    """Resample a mask stored at original resolution onto the grid (area rule; aspect ratio checked).

    Raises
    ------
    ConfigError
        The mask's aspect ratio is not its image's (it cannot cover the whole image).
    """
    h, w = mask.shape
    H, W = original_shape
    if abs(h / w - H / W) > 0.02 * (H / W):
        raise ConfigError(
            f"{what} {path} is {h}x{w} but its image is {H}x{W}; the mask must cover the whole image "
            "(same shape or at least the same aspect ratio)"
        )
    return resize_mask(mask, grid)


def _box_on_grid(bbox: tuple[int, int, int, int], original_shape, grid) -> tuple[int, int, int, int]:
    """An original-pixel box on the grid, grown outwards to whole grid pixels."""
    H, W = original_shape
    h, w = grid
    return (math.floor(bbox[0] * h / H), math.floor(bbox[1] * w / W), math.ceil(bbox[2] * h / H),
            math.ceil(bbox[3] * w / W))


def compute_image_facts(path: str | Path, analysis_size: int, sources: FactSources = FactSources()) -> ImageFacts:
    """Find the facts of one image on its analysis grid (the module docstring's steps).

    Parameters
    ----------
    path : the image file (DICOM, PNG, JPEG, TIFF).
    analysis_size : longer side of the analysis grid in pixels.
    sources : mask files and an artefact box the user supplied for this image.

    Raises
    ------
    ImageReadError
        The image or a mask file cannot be read.
    ConfigError
        A mask file does not fit its image.
    """
    from mammography.io import read_mammogram

    return facts_from_mammogram(read_mammogram(path, percentile_window=FACTS_WINDOW), analysis_size, sources)


def facts_from_mammogram(mammogram, analysis_size: int, sources: FactSources = FactSources()) -> ImageFacts:
    """:func:`compute_image_facts` of an image already read (by a caller that reads it anyway).

    Parameters
    ----------
    mammogram : the :class:`~mammography.io.Mammogram` exactly as
        ``read_mammogram(path, percentile_window=FACTS_WINDOW)`` returns it
        (not mirrored or otherwise reoriented): other reading rules give
        other facts.
    analysis_size, sources : as for :func:`compute_image_facts`.
    """
    from mammography.analysis.patterns import estimate_dense_tissue
    from mammography.analysis.spurious import bbox_mask, find_burned_in
    from mammography.io import pectoral_mask, resolve_view, segment_breast
    from mammography.io.mask import read_mask_file

    original = tuple(int(v) for v in mammogram.pixels.shape)
    view = resolve_view(mammogram)
    grid = grid_shape(original, analysis_size)
    placement = compute_geometry(original, analysis_size)
    image = np.clip(placement.to_resized(mammogram.pixels).numpy(), 0.0, 1.0)
    segmentation = segment_breast(image)
    if sources.breast_mask_path is not None:
        breast = mask_on_grid(read_mask_file(sources.breast_mask_path, "breast mask"), original, grid,
                              sources.breast_mask_path, "breast mask")
    else:
        breast = segmentation.breast
    burned_in = find_burned_in(image, breast, film_edges=segmentation.film_edges)
    markers, n_markers = burned_in.markers, burned_in.n_markers
    if sources.artifact_bbox is not None:
        known = bbox_mask(grid, _box_on_grid(sources.artifact_bbox, original, grid))
        if not (known & markers).any():  # the detector missed it: one more marker
            n_markers += 1
        markers = markers | known
    pectoral = pectoral_mask(image, breast, view=view.value)
    roi = None
    if sources.roi_path is not None:
        roi = mask_on_grid(read_mask_file(sources.roi_path, "ROI mask"), original, grid, sources.roi_path, "ROI mask")
    return ImageFacts(
        original_shape=original,
        breast=breast,
        markers=markers,
        n_markers=n_markers,
        film_edges=burned_in.film_edges,
        n_film_edges=burned_in.n_film_edges,
        pectoral=pectoral,
        dense_estimate=estimate_dense_tissue(image, breast, exclude=pectoral),
        roi=roi,
        view=view.value,
        view_source=view.source,
        breast_source="segmented" if sources.breast_mask_path is None else "file",
    )
