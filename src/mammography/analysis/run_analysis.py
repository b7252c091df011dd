"""Analyse a trained run: CAMs over all validation images, every attention metric, files on disk.

:func:`analyze_run` is ``mammography analyze --run R``. For every validation
image of the run it computes the CAM of the predicted class (one batched pass,
:mod:`mammography.cam`), then on the analysis grid (original orientation,
longer side ``analysis_size`` px; see :mod:`mammography.analysis.maps`):

* spurious attention (:mod:`~mammography.analysis.spurious`): shares outside
  the breast, in the border band and on burned-in markers (found in the
  pixels; a manifest's ``artifact_bbox`` is added when given);
* localisation against the expert region (:mod:`~mammography.analysis.localisation`)
  when the run's predictions (or ``manifest``) have ``roi_path`` or
  ``roi_dir`` holds a mask named after the image;
* the clinical pattern summary (:mod:`~mammography.analysis.patterns`);
* optionally deletion/insertion faithfulness and the cascading-randomisation
  sanity check (:mod:`~mammography.analysis.faithfulness`) on a seeded sample.

:func:`analyze_maps` does the same from maps computed elsewhere (report-pack
computes them once for its figures). :func:`compare_runs` compares two or more
analysed runs image by image (:mod:`~mammography.analysis.consistency`).

Where the masks come from
-------------------------
* **breast**: the ``breast_mask_path`` PNG when the predictions or the
  manifest name one, else :func:`mammography.io.breast_mask` of the image;
* **markers and film edges**: :func:`~mammography.analysis.spurious.find_burned_in`
  on the image at model resolution, plus ``artifact_bbox`` when known;
* **ROI**: ``roi_path``, else ``<roi_dir>/<image stem>{,_roi,_mask,_dense}.png``;
* **dense tissue** (``dense_source``): ``"roi"`` uses the ROI masks (the
  phantoms' ROI *is* their dense tissue), ``"estimate"`` thresholds the
  breast's intensities (Otsu) without the pectoral muscle of MLO views
  (:func:`mammography.io.pectoral_mask`, told the view the run resolved),
  ``"auto"`` uses the ROI when the images belong to a phantom set written by
  ``mammography synth`` (a ``synth.json`` in one of the image's three parent
  folders) and estimates otherwise.

The per-image table also says each image's laterality and view and where
they came from (the run's ``val_predictions.csv``, else as the image was
prepared), and whether the run's predictions have collapsed to one output
(``summary["collapse"]``, :func:`mammography.training.metrics.prediction_collapse`).

Images are read once each (through the run's ``MammogramDataset``, so a warm
decoded-image cache means no decoding at all): markers and the breast mask
are found in the model square, not in the full-resolution original.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from mammography.analysis.consistency import (
    ConsistencyThresholds,
    ImageConsistency,
    consistency_table,
    image_consistency,
    summarise_consistency,
)
from mammography.analysis.faithfulness import (
    BASELINES,
    FaithfulnessResult,
    SanityResult,
    cam_explainer,
    cascading_randomisation,
    faithfulness,
    occlusion_probabilities,
)
from mammography.analysis.localisation import (
    ATTENTION_THRESHOLD,
    LOCALISATION_METRICS,
    localisation_metrics,
    summarise_localisation,
)
from mammography.analysis.maps import grid_shape, map_to_grid, resize_mask, resize_mask_any
from mammography.analysis.patterns import estimate_dense_tissue, pattern_metrics, summarise_patterns
from mammography.analysis.spurious import (
    BORDER_FRACTION,
    SpuriousThresholds,
    bbox_mask,
    find_burned_in,
    image_flags,
    parse_bbox,
    spurious_shares,
    summarise_spurious,
)
from mammography.atomic import write_atomic
from mammography.csvfiles import csv_bytes
from mammography.errors import ConfigError, ImageReadError, RunError
from mammography.training.metrics import prediction_collapse
from mammography.io.geometry import Geometry
from mammography.io.mask import read_mask_file

__all__ = [
    "ANALYSIS_SIZE",
    "DENSE_SOURCES",
    "AnalysisOptions",
    "ImageRegions",
    "ImageMasks",
    "image_regions",
    "RunAnalysis",
    "ConsistencyResult",
    "analyze_run",
    "analyze_maps",
    "compare_runs",
    "AnalyzeResult",
    "analyze_runs",
    "load_run_analysis",
    "run_labels",
    "ANALYSIS_FILES",
    "CONSISTENCY_FILES",
]

log = logging.getLogger(__name__)

#: default longer side of the analysis grid. EfficientNet-B0's last block has
#: 1/32 of the input resolution (16 x 16 at 512 px), so 256 px still gives
#: 16 grid pixels per CAM cell while keeping every per-image step cheap.
ANALYSIS_SIZE = 256
DENSE_SOURCES = ("auto", "roi", "estimate")
#: files :meth:`RunAnalysis.write` creates (some only when there is data for them)
ANALYSIS_FILES = {
    "per_image": "attention_per_image.csv",
    "summary": "attention_summary.json",
    "arrays": "attention_maps.npz",
    "localisation": "localisation_by_class.csv",
    "patterns": "patterns_by_class.csv",
    "faithfulness": "faithfulness_per_image.csv",
}
#: largest analysis grid side (masks and maps are compared at this resolution; 4096 px is a full mammogram)
MAX_ANALYSIS_SIZE = 4096
#: files :meth:`ConsistencyResult.write` creates
CONSISTENCY_FILES = {"table": "consistency.csv", "summary": "consistency_summary.json"}
_ROI_SUFFIXES = ("", "_roi", "_mask", "_dense")


@dataclass(frozen=True)
class AnalysisOptions:
    """Parameters of a run analysis (the ``analyze`` flags, one field each).

    Attributes
    ----------
    method : CAM method (``gradcam``, ``gradcam++``, ``hirescam``, ``xgradcam``, ``layercam``).
    layer : target layer (``None``: the last conv block, ``features.8``).
    analysis_size : longer side of the analysis grid in pixels.
    batch_size : images per CAM batch (and perturbed copies per faithfulness batch).
    device : ``"auto"``, ``"cpu"`` or ``"cuda"``.
    cache_dir : decoded-image cache folder (``None``: decode every image).
    roi_dir : folder of ROI masks named after the images.
    manifest : a manifest CSV whose ``roi_path``, ``breast_mask_path`` and
        ``artifact_bbox`` columns are used for images the run lacks them for.
    dense_source : ``"auto"``, ``"roi"`` or ``"estimate"`` (module docstring).
    attention_threshold : normalised attention counted as "attended" (IoU,
        Dice, attended breast share).
    border_fraction : width of the border band, fraction of the image side.
    spurious : :class:`SpuriousThresholds`.
    max_images : analyse only the first N validation images (by path), for quick looks.
    marker_occlusion : also paint each image's markers with its background
        level and record how much the predicted class's probability drops
        (one forward pass per image with markers; needs the model).
    faithfulness, faithfulness_images, faithfulness_steps, faithfulness_baseline :
        run deletion/insertion on a seeded sample of this many images, with
        this many steps and this baseline (``zero``, ``blur``, ``mean``).
    sanity, sanity_images : run the cascading-randomisation check on a
        seeded sample of this many images.
    seed : seed of the samples, random orders, re-initialisation and bootstrap.
    progress : show tqdm progress bars.
    """

    method: str = "gradcam"
    layer: str | None = None
    analysis_size: int = ANALYSIS_SIZE
    batch_size: int = 16
    device: str = "cpu"
    cache_dir: Path | None = None
    roi_dir: Path | None = None
    manifest: Path | None = None
    dense_source: str = "auto"
    attention_threshold: float = ATTENTION_THRESHOLD
    border_fraction: float = BORDER_FRACTION
    spurious: SpuriousThresholds = SpuriousThresholds()
    max_images: int | None = None
    marker_occlusion: bool = True
    faithfulness: bool = False
    faithfulness_images: int = 16
    faithfulness_steps: int = 20
    faithfulness_baseline: str = "zero"
    sanity: bool = False
    sanity_images: int = 8
    seed: int = 0
    progress: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work."""
        from mammography.limits import MAX_BATCH_SIZE, check_float, check_int

        check_int(self.analysis_size, "--analysis-size", 16, MAX_ANALYSIS_SIZE)
        check_int(self.batch_size, "--batch-size", 1, MAX_BATCH_SIZE)
        check_float(self.attention_threshold, "attention threshold", 0.0, 1.0)
        check_float(self.border_fraction, "border fraction", 0.0, 0.5)
        if self.dense_source not in DENSE_SOURCES:
            raise ConfigError(f"--dense-source must be one of {', '.join(DENSE_SOURCES)}, got {self.dense_source!r}")
        if self.faithfulness_baseline not in BASELINES:
            raise ConfigError(f"--faithfulness-baseline must be one of {', '.join(BASELINES)}")
        if self.faithfulness_steps < 1 or self.faithfulness_images < 1 or self.sanity_images < 1:
            raise ConfigError("faithfulness steps and the faithfulness/sanity image counts must be at least 1")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"--max-images must be at least 1, got {self.max_images}")
        if self.roi_dir is not None and not Path(self.roi_dir).is_dir():
            raise ConfigError(f"--roi-dir {self.roi_dir} is not a folder; give the folder of the ROI mask PNGs")

    def to_dict(self) -> dict:
        """JSON-ready options; the cache folder is a detail of this machine, not recorded (shipped JSON
        names no local path the user did not give)."""
        d = dataclasses.asdict(self)
        d["cache_dir"] = None
        for k in ("roi_dir", "manifest"):
            d[k] = None if d[k] is None else str(d[k])
        return d


@dataclass(frozen=True)
class ImageRegions:
    """The masks of one image on its analysis grid (stored bit-packed).

    Attributes
    ----------
    shape : (h, w) of the grid.
    breast_bits, marker_bits : ``numpy.packbits`` of the flattened masks.
    n_markers : marker regions found (detected, plus 1 for a known artefact box).
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


@dataclass(eq=False)
class RunAnalysis:
    """Everything measured on one run.

    Attributes
    ----------
    run_id, seed, run_path : identify the run.
    table : one row per validation image (columns in :meth:`write`'s docs).
    maps : (N, h, w) float32 raw low-resolution CAMs of the predicted class, model space.
    geometries : one :class:`Geometry` per image.
    regions : one :class:`ImageRegions` per image.
    options : the :class:`AnalysisOptions` used.
    summary : the JSON summary (spurious, localisation, patterns, faithfulness, sanity, timings).
    localisation : per-class localisation summary, or None without ROIs.
    patterns : per-class pattern summary.
    faithfulness : :class:`FaithfulnessResult` or None.
    sanity : :class:`SanityResult` or None.
    dataset : the ``MammogramDataset`` of the images when available (for display).
    """

    run_id: str
    seed: int | None
    run_path: Path
    table: pd.DataFrame
    maps: np.ndarray
    geometries: list[Geometry]
    regions: list[ImageRegions]
    options: AnalysisOptions
    summary: dict
    localisation: pd.DataFrame | None = None
    patterns: pd.DataFrame | None = None
    faithfulness: FaithfulnessResult | None = None
    sanity: SanityResult | None = None
    dataset: object = None

    @property
    def image_paths(self) -> list[str]:
        return self.table["image_path"].astype(str).tolist()

    def index_of(self, image_path: str) -> int:
        """Row of ``image_path`` in :attr:`table`."""
        matches = np.flatnonzero(self.table["image_path"].astype(str).to_numpy() == str(image_path))
        if not len(matches):
            raise KeyError(image_path)
        return int(matches[0])

    def grid_shape(self, i: int) -> tuple[int, int]:
        """Analysis-grid shape of image ``i``."""
        return self.regions[i].shape

    def grid_map(self, i: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Image ``i``'s CAM on its analysis grid (or on ``shape``), float32, raw values."""
        return map_to_grid(self.maps[i], self.geometries[i], shape or self.grid_shape(i))

    def display_image(self, i: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Image ``i`` in original orientation on its grid (or ``shape``), [0, 1]."""
        ds = self._dataset()
        square = ds.square(i)
        return np.clip(map_to_grid(square, self.geometries[i], shape or self.grid_shape(i)), 0.0, 1.0)

    def _dataset(self):
        if self.dataset is None:
            from mammography.data.dataset import MammogramDataset, laterality_hints
            from mammography.data.preprocess import Preprocessing

            info = self.summary["run"]
            # the run's own record; analyses written before it existed were of this project's runs
            record = info.get("preprocessing") or {"pipeline": "fit-pad", "version": "1",
                                                    "normalise_laterality": info["normalise_laterality"]}
            preprocessing = Preprocessing.from_record(record, img_size=info["img_size"], mean=info.get("mean"),
                                                      std=info.get("std"))
            self.dataset = MammogramDataset(self.image_paths, cache_dir=self.options.cache_dir,
                                            preprocessing=preprocessing,
                                            laterality_hints=laterality_hints(self.table))
        return self.dataset

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write the analysis files (:data:`ANALYSIS_FILES`) into ``out_dir``, each atomically.

        * ``attention_per_image.csv``: ``image_path, y_true, y_pred,
          confidence, target`` and per image every share, area, flag,
          localisation and pattern metric;
        * ``attention_summary.json``: :attr:`summary`;
        * ``attention_maps.npz``: the low-resolution maps, geometries and
          bit-packed masks (read back by :func:`load_run_analysis`);
        * ``localisation_by_class.csv`` (with ROIs), ``patterns_by_class.csv``,
          ``faithfulness_per_image.csv`` (with faithfulness).
        """
        out = Path(out_dir)
        return [write_atomic(out / name, data) for name, data in self.files().items()]

    def files(self) -> dict[str, bytes]:
        """The contents :meth:`write` writes, by file name (for a caller's all-or-nothing batch)."""
        files = {
            ANALYSIS_FILES["per_image"]: _csv_bytes(self.table),
            ANALYSIS_FILES["summary"]: _json_bytes(self.summary),
            ANALYSIS_FILES["arrays"]: _npz_bytes(self._arrays()),
        }
        if self.localisation is not None:
            files[ANALYSIS_FILES["localisation"]] = _csv_bytes(self.localisation)
        if self.patterns is not None:
            files[ANALYSIS_FILES["patterns"]] = _csv_bytes(self.patterns)
        if self.faithfulness is not None:
            files[ANALYSIS_FILES["faithfulness"]] = _csv_bytes(self.faithfulness.table())
        return files

    def _arrays(self) -> dict:
        return {
            "maps": self.maps.astype(np.float32),
            "image_paths": np.array(self.image_paths, dtype=str),
            "geometries": np.array(json.dumps([g.to_dict() for g in self.geometries])),
            "grid_shapes": np.array([r.shape for r in self.regions], dtype=np.int64).reshape(-1, 2),
            "n_markers": np.array([r.n_markers for r in self.regions], dtype=np.int64),
            "breast_bits": _ragged([r.breast_bits for r in self.regions]),
            "marker_bits": _ragged([r.marker_bits for r in self.regions]),
            # film edges: only the images that have strips, and which images those are
            "n_film_edges": np.array([r.n_film_edges for r in self.regions], dtype=np.int64),
            "film_edge_index": np.array([i for i, r in enumerate(self.regions) if r.film_edge_bits is not None],
                                        dtype=np.int64),
            "film_edge_bits": _ragged([r.film_edge_bits for r in self.regions if r.film_edge_bits is not None]),
        }


@dataclass(eq=False)
class ConsistencyResult:
    """Cross-run comparison of shared images.

    Attributes
    ----------
    labels : run labels (seeds as text, or run ids), in the order given.
    records : one :class:`ImageConsistency` per shared image.
    table : :func:`consistency_table` (most consistent first).
    summary : :func:`summarise_consistency` plus the runs compared.
    analyses : the :class:`RunAnalysis` objects compared (for figures).
    """

    labels: list[str]
    records: list[ImageConsistency]
    table: pd.DataFrame
    summary: dict
    analyses: list[RunAnalysis] = field(default_factory=list)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``consistency.csv`` and ``consistency_summary.json`` into ``out_dir``."""
        out = Path(out_dir)
        return [write_atomic(out / name, data) for name, data in self.files().items()]

    def files(self) -> dict[str, bytes]:
        """The contents :meth:`write` writes, by file name."""
        return {
            CONSISTENCY_FILES["table"]: _csv_bytes(self.table),
            CONSISTENCY_FILES["summary"]: _json_bytes(self.summary),
        }


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def _clean(value):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _json_bytes(obj) -> bytes:
    return (json.dumps(_clean(obj), indent=2) + "\n").encode("utf-8")


def _csv_bytes(table: pd.DataFrame) -> bytes:
    return csv_bytes(table, float_format="%.6g")


def _npz_bytes(arrays: dict) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _ragged(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate uint8 arrays of different lengths (lengths follow from the grid shapes)."""
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------


def _mask_on_grid(mask: np.ndarray, original_shape: tuple[int, int], grid: tuple[int, int], path, what: str) -> np.ndarray:
    """Resample a mask stored at original resolution onto the grid (aspect checked)."""
    h, w = mask.shape
    H, W = original_shape
    if abs(h / w - H / W) > 0.02 * (H / W):
        raise ConfigError(
            f"{what} {path} is {h}x{w} but its image is {H}x{W}; the mask must cover the whole image "
            "(same shape or at least the same aspect ratio)"
        )
    return resize_mask(mask, grid)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in ("", "nan")


def _find_roi(image_path: str, roi_dir: Path | None) -> Path | None:
    if roi_dir is None:
        return None
    stem = Path(image_path).stem
    for suffix in _ROI_SUFFIXES:
        candidate = Path(roi_dir) / f"{stem}{suffix}.png"
        if candidate.is_file():
            return candidate
    return None


def _is_phantom(image_path: str) -> bool:
    """True when a ``synth.json`` (written by ``mammography synth``) sits in one of the image's three parent folders."""
    return any((parent / "synth.json").is_file() for parent in list(Path(image_path).parents)[:3])


def _merge_manifest(table: pd.DataFrame, manifest: Path | None) -> pd.DataFrame:
    """Fill ``roi_path``, ``breast_mask_path``, ``artifact_bbox`` from a manifest, matched by ``image_path``."""
    if manifest is None:
        return table
    from mammography.data import load_manifest

    m = load_manifest(manifest)
    extra = [c for c in ("roi_path", "breast_mask_path", "artifact_bbox") if c in m.columns]
    if not extra:
        return table
    m = m.drop_duplicates("image_path").set_index(m["image_path"].map(lambda p: str(Path(p).resolve())))[extra]
    keys = table["image_path"].map(lambda p: str(Path(p).resolve()))
    out = table.copy()
    for c in extra:
        from_manifest = keys.map(m[c])
        out[c] = out[c].where(~out[c].map(_is_missing), from_manifest) if c in out.columns else from_manifest
    return out


@dataclass(frozen=True)
class ImageMasks:
    """What :func:`image_regions` finds in one image.

    Attributes
    ----------
    regions : breast and marker masks on the analysis grid (bit-packed).
    breast : bool breast mask on the grid.
    image : the image on the grid, [0, 1] (None when not asked for).
    markers_model : bool (S, S) marker mask in model space (laterality flip
        and padding as the model sees it), for occlusion.
    background : the image's background level (median outside the breast
        and the markers), [0, 1].
    breast_model : bool (S, S) breast mask in model space (where the
        randomisation check compares maps).
    film_edges : bool film-edge strips on the grid.
    """

    regions: ImageRegions
    breast: np.ndarray
    image: np.ndarray | None
    markers_model: np.ndarray
    background: float
    breast_model: np.ndarray
    film_edges: np.ndarray | None = None


def _into_square(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A mask of the resized image (original orientation) placed in the model square: flipped and padded
    as the model saw the image."""
    return geometry.place_resized(np.asarray(mask, dtype=bool))


def image_regions(
    square: np.ndarray,
    geometry: Geometry,
    grid: tuple[int, int],
    *,
    breast_mask_path=None,
    artifact_bbox=None,
    with_image: bool = True,
) -> ImageMasks:
    """Breast and marker masks of one image on its grid, and what occlusion needs.

    Parameters
    ----------
    square : (S, S) model-space image in [0, 1] (``MammogramDataset.square``).
    geometry : its :class:`Geometry`.
    grid : the analysis-grid shape.
    breast_mask_path : PNG of the breast mask at original resolution, or None
        (then the breast is segmented with :func:`mammography.io.breast_mask`).
    artifact_bbox : ``(r0, c0, r1, c1)`` in original pixels (or a manifest
        cell), added to the detected markers.
    with_image : also resample the image onto the grid (``ImageMasks.image``; else None).

    Returns
    -------
    ImageMasks
    """
    from mammography.io import segment_breast

    # the image at model resolution in its own orientation: fine enough for thin marker strokes
    frame = dataclasses.replace(geometry, original_shape=tuple(geometry.resized_shape))
    display = np.clip(frame.to_original(square), 0.0, 1.0)
    image = np.clip(map_to_grid(square, geometry, grid), 0.0, 1.0) if with_image else None
    segmentation = segment_breast(display)
    if not _is_missing(breast_mask_path):
        breast_full = read_mask_file(breast_mask_path, "breast mask")
        breast = _mask_on_grid(breast_full, geometry.original_shape, grid, breast_mask_path, "breast mask")
        breast_model = _mask_on_grid(breast_full, geometry.original_shape, display.shape, breast_mask_path, "breast mask")
    else:
        breast_model = segmentation.breast
        breast = resize_mask(breast_model, grid)
    burned_in = find_burned_in(display, breast_model, film_edges=segmentation.film_edges)
    markers_model, n_markers = burned_in.markers, burned_in.n_markers
    bbox = parse_bbox(artifact_bbox) if not _is_missing(artifact_bbox) else None
    if bbox is not None:
        H, W = geometry.original_shape
        h, w = display.shape
        box = (math.floor(bbox[0] * h / H), math.floor(bbox[1] * w / W), math.ceil(bbox[2] * h / H), math.ceil(bbox[3] * w / W))
        known = bbox_mask(display.shape, box)
        if not (known & markers_model).any():  # the detector missed it: one more marker
            n_markers += 1
        markers_model |= known
    markers = resize_mask_any(markers_model, grid)
    film_edges = resize_mask_any(burned_in.film_edges, grid)
    rest = ~(breast_model | markers_model | burned_in.film_edges)
    background = float(np.median(display[rest])) if rest.any() else 0.0
    in_square = _into_square(markers_model, geometry)
    if in_square.any():  # a pixel of margin covers the resampling halo
        in_square = ndimage.binary_dilation(in_square, iterations=1)
    regions = ImageRegions.from_masks(breast, markers, n_markers, film_edges, burned_in.n_film_edges)
    return ImageMasks(regions, breast, image, in_square, background, _into_square(breast_model, geometry), film_edges)


# ---------------------------------------------------------------------------
# the analysis
# ---------------------------------------------------------------------------


def _sample(n: int, k: int, seed: int, paths: list[str]) -> np.ndarray:
    """``k`` image indices drawn without replacement, reproducibly (independent of row order)."""
    order = np.argsort(np.asarray(paths, dtype=str), kind="stable")
    rng = np.random.default_rng(seed)
    return np.sort(order[rng.choice(n, size=min(k, n), replace=False)]) if n else np.zeros(0, int)


def _image_areas(dataset, idx: np.ndarray) -> torch.Tensor:
    """(k, S, S) bool image areas (padding excluded) of the sampled images."""
    return torch.stack([torch.from_numpy(dataset.geometry(int(i)).image_area()) for i in idx])


def analyze_run(run, options: AnalysisOptions = AnalysisOptions(), out_dir: str | Path | None = None, *,
                layers=None, num_workers=None, store=None) -> RunAnalysis:
    """Analyse one run's attention over all its validation images.

    Parameters
    ----------
    run : a run directory (str / Path) or a :class:`mammography.runs.Run`.
    options : :class:`AnalysisOptions`; ``options.layer`` is measured.
    out_dir : when given, the files of :meth:`RunAnalysis.write` are written there.
    layers : the layers to get from the sweep (default: ``options.layer``
        alone); more make the stored record serve later commands.
    num_workers : image-decoding processes of the sweep (``None``: a number that suits the machine).
    store : where sweep records are found and kept (default: the record store
        of ``options.cache_dir``; see :func:`mammography.cam.sweep.run_maps`).

    Returns
    -------
    RunAnalysis
    """
    from mammography.cam.layers import density_layer_names
    from mammography.cam.sweep import run_maps
    from mammography.machine import resolve_device
    from mammography.runs import as_run

    options.validate()
    run = as_run(run)
    t0 = time.perf_counter()
    predictions, rows = _select_rows(run.predictions, options)
    device = resolve_device(options.device)
    model = run.load_model(device=device)  # for the marker occlusion, and the sweep when no record serves
    layer = density_layer_names(options.layer)[-1]
    wanted = list(dict.fromkeys([*density_layer_names(layers or [layer]), layer]))
    sweep = run_maps(run, wanted, options.method, batch_size=options.batch_size, device=device,
                     cache_dir=options.cache_dir, store=store, num_workers=num_workers, progress=options.progress,
                     model=model, rows=rows)
    t_cam = time.perf_counter() - t0
    check = run.check_predictions(sweep.probs, rows=rows)
    result = analyze_maps(run, run.dataset(options.cache_dir, rows=rows), sweep.maps[layer], sweep.probs,
                          model=model, options=options, predictions=predictions, check=check)
    result.summary["timings"]["cam_seconds"] = round(t_cam, 3)
    if out_dir is not None:
        result.write(out_dir)
    return result


def _select_rows(predictions: pd.DataFrame, options: AnalysisOptions) -> tuple[pd.DataFrame, list[int]]:
    """The rows analysed (manifest columns merged in) and their positions in ``predictions``."""
    table = _merge_manifest(predictions.reset_index(drop=True), options.manifest)
    if options.max_images is not None and len(table) > options.max_images:
        table = table.sort_values("image_path", kind="stable").head(options.max_images)
    return table.reset_index(drop=True), [int(i) for i in table.index]


def analyze_maps(
    run,
    dataset,
    maps: np.ndarray,
    probs: np.ndarray,
    *,
    model: torch.nn.Module | None = None,
    options: AnalysisOptions = AnalysisOptions(),
    predictions: pd.DataFrame | None = None,
    check=None,
) -> RunAnalysis:
    """Analyse CAMs computed elsewhere (e.g. by report-pack's single pass).

    Parameters
    ----------
    run : the :class:`mammography.runs.Run`.
    dataset : its validation images as a ``MammogramDataset``, in the order of ``maps``.
    maps : (N, h, w) model-space CAMs of the predicted class (raw or
        min-max normalised: every metric normalises again).
    probs : (N, 4) probabilities from the same pass (the predicted class is their argmax).
    model : needed only for ``options.faithfulness`` / ``options.sanity``.
    options : :class:`AnalysisOptions`.
    predictions : rows for the images, in dataset order, with ``image_path``
        and ``y_true`` (default ``run.predictions`` with ``options.manifest``
        merged in); ``roi_path``, ``breast_mask_path`` and ``artifact_bbox``
        are used when present.
    check : the :class:`~mammography.runs.PredictionCheck` of ``probs``
        against the run's stored predictions (same rows); where it says they
        differ the per-image table gets the stored prediction beside the
        recomputed one (``stored_y_pred``).

    Returns
    -------
    RunAnalysis
    """
    options.validate()
    t0 = time.perf_counter()
    rows = _merge_manifest(run.predictions.reset_index(drop=True), options.manifest) if predictions is None else predictions
    maps = np.asarray(maps, dtype=np.float32)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(dataset)
    if not (len(rows) == n == len(maps) == len(probs)):
        raise ConfigError(f"{len(rows)} prediction rows, {n} images, {len(maps)} maps and {len(probs)} probability rows differ")
    paths = [str(p) for p in dataset.paths]
    if [str(Path(p)) for p in rows["image_path"]] != paths:
        raise ConfigError("the prediction rows are not in the dataset's image order")
    if options.faithfulness or options.sanity:
        if model is None:
            raise ConfigError("faithfulness and sanity checks need the model")
    y_pred = probs.argmax(axis=1) + 1 if n else np.zeros(0, int)
    sanity_idx = _sample(n, options.sanity_images, options.seed + 1, paths) if options.sanity else np.zeros(0, int)
    sanity_breasts: dict[int, np.ndarray] = {}
    records, regions, geometries, occlusion_jobs = [], [], [], []
    dense_sources, roi_count = set(), 0
    for i in range(n):
        prepared = dataset.prepared(i)
        geom = prepared.geometry
        grid = grid_shape(geom.original_shape, options.analysis_size)
        row = rows.iloc[i]
        masks = image_regions(
            prepared.square,
            geom,
            grid,
            breast_mask_path=row.get("breast_mask_path"),
            artifact_bbox=row.get("artifact_bbox"),
            with_image=False,  # only the dense-tissue estimate needs it (computed below when used)
        )
        reg, breast, image = masks.regions, masks.breast, masks.image
        if masks.markers_model.any():
            occlusion_jobs.append((i, masks.markers_model, masks.background))
        if i in sanity_idx:
            sanity_breasts[i] = masks.breast_model
        heat = map_to_grid(maps[i], geom, grid)
        rec = {
            "image_path": paths[i],
            "y_true": int(row["y_true"]),
            "y_pred": int(y_pred[i]),
            "confidence": float(probs[i, y_pred[i] - 1]),
            "target": int(y_pred[i]),
        }
        sp = spurious_shares(heat, breast, reg.markers(), options.border_fraction, reg.n_markers,
                             film_edges=masks.film_edges, n_film_edges=reg.n_film_edges)
        for kind in ("outside_breast", "border", "marker", "film_edge"):
            rec[f"{kind}_share"] = getattr(sp, kind)
            rec[f"{kind}_area"] = getattr(sp, f"{kind}_area")
        rec["n_markers"] = sp.n_markers
        rec["n_film_edges"] = sp.n_film_edges
        rec.update(_orientation_columns(row, prepared))
        roi_path = row.get("roi_path")
        roi_file = Path(roi_path) if not _is_missing(roi_path) else _find_roi(paths[i], options.roi_dir)
        roi = None
        if roi_file is not None:
            roi = _mask_on_grid(read_mask_file(roi_file, "ROI mask"), geom.original_shape, grid, roi_file, "ROI mask")
            roi_count += 1
            loc = localisation_metrics(heat, roi, options.attention_threshold)
            rec.update(loc.to_dict())
        else:
            rec.update({m: math.nan for m in (*LOCALISATION_METRICS, "roi_area_share")})
        use_roi = roi is not None and (
            options.dense_source == "roi" or (options.dense_source == "auto" and _is_phantom(paths[i]))
        )
        if options.dense_source == "roi" and roi is None:
            raise ConfigError(f"--dense-source roi needs an ROI mask for every image; none for {paths[i]}")
        if not use_roi and image is None:
            image = np.clip(map_to_grid(prepared.square, geom, grid), 0.0, 1.0)
        dense = roi if use_roi else _estimate_dense(image, breast, rec.get("view"))
        dense_sources.add("roi" if use_roi else "estimate")
        rec.update(pattern_metrics(heat, breast, dense, options.attention_threshold).to_dict())
        records.append(rec)
        regions.append(reg)
        geometries.append(geom)
    table = pd.DataFrame(records)
    if check is not None and n:
        table.insert(table.columns.get_loc("confidence") + 1, "stored_y_pred", _stored_beside(run, check, paths))
    t_occlusion = time.perf_counter()
    if n and model is not None and options.marker_occlusion:
        table = table.join(_marker_occlusion(model, dataset, occlusion_jobs, probs, y_pred, run, options))
    t_occlusion = time.perf_counter() - t_occlusion
    if n:
        table = pd.concat([table, image_flags(table, options.spurious)], axis=1)
    t_metrics = time.perf_counter() - t0

    localisation = summarise_localisation(table, seed=options.seed) if roi_count else None
    patterns_summary = summarise_patterns(table, seed=options.seed) if n else None
    faith = sanity = None
    t1 = time.perf_counter()
    if options.faithfulness and n:
        faith = _run_faithfulness(model, dataset, maps, y_pred, paths, options, run)
    t_faith = time.perf_counter() - t1
    t2 = time.perf_counter()
    if options.sanity and n:
        sanity = _run_sanity(model, dataset, y_pred, sanity_idx, np.stack([sanity_breasts[int(i)] for i in sanity_idx]),
                             options)
    t_sanity = time.perf_counter() - t2

    summary = {
        "run": {
            "path": str(run.path),
            "run_id": run.run_id,
            "seed": run.seed,
            "img_size": run.img_size,
            "normalise_laterality": run.normalise_laterality,
            "mean": list(run.mean),
            "std": list(run.std),
            "preprocessing": run.preprocessing.to_record(),
            "writer": run.writer,
        },
        "prediction_check": None if check is None else {
            "stored": check.source, "n_differ": check.n_disagree, "note": check.note or None,
            "max_prob_diff": check.max_prob_diff,
        },
        "options": options.to_dict(),
        "grid": (
            f"original image orientation (laterality flip undone, padding removed), longer side "
            f"{options.analysis_size} px"
        ),
        "n_images": n,
        "collapse": prediction_collapse(probs),
        "n_with_roi": roi_count,
        "dense_source": "+".join(sorted(dense_sources)) or None,
        "targets": "predicted class",
        "spurious": summarise_spurious(table, options.spurious, seed=options.seed) if n else None,
        "localisation": None if localisation is None else localisation.to_dict(orient="records"),
        "patterns": patterns_summary,
        "faithfulness": None if faith is None else faith.summary(seed=options.seed),
        "sanity": None if sanity is None else sanity.summary(),
        "timings": {
            "metrics_seconds": round(t_metrics, 3),
            "occlusion_seconds": round(t_occlusion, 3),
            "faithfulness_seconds": round(t_faith, 3),
            "sanity_seconds": round(t_sanity, 3),
        },
    }
    patterns_table = (
        pd.DataFrame(patterns_summary["by_class"]) if patterns_summary is not None else None
    )
    return RunAnalysis(
        run_id=run.run_id,
        seed=run.seed,
        run_path=Path(run.path),
        table=table,
        maps=maps,
        geometries=geometries,
        regions=regions,
        options=options,
        summary=summary,
        localisation=localisation,
        patterns=patterns_table,
        faithfulness=faith,
        sanity=sanity,
        dataset=dataset,
    )


def _stored_beside(run, check, paths: list[str]) -> pd.Series:
    """The run's stored prediction where ``check`` says it differs from the recomputed one, else empty."""
    differs = np.asarray(check.differs, dtype=bool)
    if run.stored is None:
        return pd.Series(np.zeros(len(paths), int), dtype="Int64").where(differs)
    position = {str(p): i for i, p in enumerate(run.predictions["image_path"].astype(str))}
    stored = run.stored.y_pred[[position[p] for p in paths]]
    return pd.Series(stored, dtype="Int64").where(differs)


def _orientation_columns(row, prepared) -> dict:
    """Laterality and view of one image and where they came from: the run's predictions when they say
    (what training resolved), else as the image was prepared here."""
    out = {}
    for key in ("laterality", "view"):
        stored, source = row.get(key), row.get(f"{key}_source")
        if not _is_missing(stored) and not _is_missing(source):
            out[key], out[f"{key}_source"] = str(stored), str(source)
        else:
            out[key], out[f"{key}_source"] = getattr(prepared, key, None), getattr(prepared, f"{key}_source", None)
    return out


def _estimate_dense(image: np.ndarray, breast: np.ndarray, view) -> np.ndarray:
    """Dense-tissue estimate without the pectoral muscle (looked for unless the view is CC)."""
    from mammography.io import pectoral_mask

    muscle = pectoral_mask(image, breast, view=None if _is_missing(view) else str(view))
    return estimate_dense_tissue(image, breast, exclude=muscle)


def _marker_occlusion(model, dataset, jobs, probs, y_pred, run, options: AnalysisOptions) -> pd.DataFrame:
    """Per image with markers: probability of the predicted class with the markers painted over.

    Returns a frame indexed like the per-image table with ``marker_occlusion_prob``,
    ``marker_occlusion_drop`` (before minus after) and ``marker_occlusion_flip``
    (the predicted class changes); NaN / False for images without markers.
    """
    n = len(y_pred)
    prob, drop, flip = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
    mean = torch.tensor(run.mean, dtype=torch.float32)
    std = torch.tensor(run.std, dtype=torch.float32)
    for start in range(0, len(jobs), options.batch_size):
        chunk = jobs[start : start + options.batch_size]
        idx = [i for i, _, _ in chunk]
        images = torch.stack([dataset[i]["image"] for i in idx])
        masks = np.stack([m for _, m, _ in chunk])
        fill = torch.stack([(torch.full((3,), float(b)) - mean) / std for _, _, b in chunk])
        after = occlusion_probabilities(model, images, masks, fill, batch_size=options.batch_size)
        rows = np.asarray(idx)
        cls = y_pred[rows].astype(int) - 1
        p_after = after[np.arange(len(rows)), cls]
        prob[rows] = p_after
        drop[rows] = probs[rows, cls] - p_after
        flip[rows] = after.argmax(axis=1) != cls
    return pd.DataFrame({"marker_occlusion_prob": prob, "marker_occlusion_drop": drop, "marker_occlusion_flip": flip})


def _inputs(dataset, idx: np.ndarray) -> torch.Tensor:
    return torch.stack([dataset[int(i)]["image"] for i in idx])


def _run_faithfulness(model, dataset, maps, y_pred, paths, options: AnalysisOptions, run) -> FaithfulnessResult:
    idx = _sample(len(paths), options.faithfulness_images, options.seed, paths)
    zero = -torch.tensor(run.mean, dtype=torch.float32) / torch.tensor(run.std, dtype=torch.float32)
    return faithfulness(
        model,
        _inputs(dataset, idx),
        maps[idx],
        y_pred[idx] - 1,
        areas=_image_areas(dataset, idx),
        n_steps=options.faithfulness_steps,
        baseline=options.faithfulness_baseline,
        zero_value=zero,
        batch_size=options.batch_size,
        seed=options.seed,
        image_ids=[paths[i] for i in idx],
    )


def _run_sanity(model, dataset, y_pred, idx: np.ndarray, breasts: np.ndarray, options: AnalysisOptions) -> SanityResult:
    """Cascading randomisation on the sampled images; maps compared inside each breast (a map that is merely
    high on the breast and low on the background would otherwise correlate with any other such map)."""
    return cascading_randomisation(
        model,
        _inputs(dataset, idx),
        y_pred[idx] - 1,
        explain=cam_explainer(options.method, options.layer, options.batch_size),
        areas=torch.from_numpy(breasts),
        seed=options.seed,
    )


# ---------------------------------------------------------------------------
# comparing runs
# ---------------------------------------------------------------------------


def run_labels(analyses: Sequence) -> list[str]:
    """Labels of runs (anything with ``seed`` and ``run_id``: :class:`RunAnalysis`, ``Run``):
    their seeds when every run has a distinct seed, else their run ids (``/`` -> ``_``)."""
    seeds = [a.seed for a in analyses]
    if all(s is not None for s in seeds) and len(set(seeds)) == len(seeds):
        return [str(s) for s in seeds]
    ids = [a.run_id.replace("/", "_") for a in analyses]
    if len(set(ids)) == len(ids):
        return ids
    return [f"{i + 1}_{rid}" for i, rid in enumerate(ids)]


def compare_runs(
    analyses: Sequence[RunAnalysis],
    thresholds: ConsistencyThresholds = ConsistencyThresholds(),
    out_dir: str | Path | None = None,
) -> ConsistencyResult:
    """Cross-run consistency over the validation images the runs share.

    Maps are compared on the grid of the first run that has the image (the
    others are resampled onto it), inside the breast mask; an image counts as
    "attention on an artefact" for a run when that run's marker or border
    share is flagged in its analysis.

    Parameters
    ----------
    analyses : two or more :class:`RunAnalysis`.
    thresholds : :class:`ConsistencyThresholds`.
    out_dir : when given, ``consistency.csv`` and ``consistency_summary.json`` are written there.

    Raises
    ------
    ConfigError
        Fewer than two runs, or no shared image.
    """
    analyses = list(analyses)
    if len(analyses) < 2:
        raise ConfigError(f"cross-seed consistency needs at least two runs, got {len(analyses)}")
    labels = run_labels(analyses)
    shared = set(analyses[0].image_paths)
    for a in analyses[1:]:
        shared &= set(a.image_paths)
    if not shared:
        raise ConfigError(
            "the runs share no validation image, so their attention cannot be compared; train the seeds on one "
            "split (train-density --split-seed) or compare folds of the same cross-validation"
        )
    records = []
    for path in sorted(shared):
        idx = [a.index_of(path) for a in analyses]
        first, i0 = analyses[0], idx[0]
        grid = first.grid_shape(i0)
        maps, preds, confs, flags = {}, {}, {}, {}
        for label, a, i in zip(labels, analyses, idx):
            row = a.table.iloc[i]
            maps[label] = a.grid_map(i, grid)
            preds[label] = int(row["y_pred"])
            confs[label] = float(row["confidence"])
            flags[label] = bool(row.get("marker_flag", False) or row.get("border_flag", False))
        records.append(
            image_consistency(
                path,
                maps,
                preds,
                confs,
                within=first.regions[i0].breast(),
                artefact_flags=flags,
                thresholds=thresholds,
                y_true=int(first.table.iloc[i0]["y_true"]),
            )
        )
    table = consistency_table(records)
    summary = summarise_consistency(table, thresholds)
    summary["run_ids"] = {label: a.run_id for label, a in zip(labels, analyses)}
    summary["grid"] = first.summary.get("grid")
    summary["within"] = "breast mask"
    result = ConsistencyResult(labels=labels, records=records, table=table, summary=summary, analyses=analyses)
    if out_dir is not None:
        result.write(out_dir)
    return result


@dataclass(eq=False)
class AnalyzeResult:
    """What :func:`analyze_runs` computed and wrote.

    Attributes
    ----------
    analyses : one :class:`RunAnalysis` per run (CV roots expanded to their folds).
    labels : the runs' labels (seeds, else run ids); also their sub-folder names.
    consistency : cross-run comparison, or None (one run, or no shared images).
    out_dir : the output folder.
    written : files written so far.
    notes : things the user should know (e.g. why there is no consistency).
    """

    analyses: list[RunAnalysis]
    labels: list[str]
    consistency: ConsistencyResult | None
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def files(self) -> dict[Path, bytes]:
        """Every analysis file by path: ``out_dir/<label>/...`` per run, consistency files in ``out_dir``."""
        files = {self.out_dir / label / name: data
                 for label, analysis in zip(self.labels, self.analyses) for name, data in analysis.files().items()}
        if self.consistency is not None:
            files.update({self.out_dir / name: data for name, data in self.consistency.files().items()})
        return files


def analyze_runs(
    run_specs,
    options: AnalysisOptions = AnalysisOptions(),
    out_dir: str | Path = Path("outputs/analysis"),
    *,
    thresholds: ConsistencyThresholds = ConsistencyThresholds(),
    outputs_root: str | Path = Path("outputs"),
    write: bool = True,
    layers=None,
    num_workers=None,
    store=None,
) -> AnalyzeResult:
    """``mammography analyze``: analyse every run, then compare them when they share images.

    Parameters
    ----------
    run_specs : run directories, names under the outputs folder, globs, or
        cross-validation roots (expanded to their folds); see
        :func:`mammography.runs.resolve_runs`.
    options : :class:`AnalysisOptions`.
    out_dir : each run's files go to ``out_dir/<label>/`` (label = seed, or
        run id when seeds repeat); ``consistency.csv`` and
        ``consistency_summary.json`` to ``out_dir``.
    thresholds : :class:`ConsistencyThresholds`.
    outputs_root : where relative run names are looked up.
    write : write :meth:`AnalyzeResult.files` into ``out_dir``, all at the
        end or none, under the folder's lock taken before any map is
        computed (:mod:`mammography.atomic`). ``False`` computes only (a
        caller that adds files of its own commits them all together).
    layers, num_workers, store : as for :func:`analyze_run`.
    """
    from mammography.atomic import FileBatch, OutputLock

    options.validate()
    out = Path(out_dir)
    sweep = {"layers": layers, "num_workers": num_workers, "store": store}
    if not write:
        return _analyze_runs(run_specs, options, out, thresholds, outputs_root, sweep)
    with OutputLock(folders=[out], command="mammography analyze") as lock:
        result = _analyze_runs(run_specs, options, out, thresholds, outputs_root, sweep)
        batch = FileBatch()
        for path, data in result.files().items():
            batch.add(path, data)
        result.written += batch.commit(lock.journal(out))
    return result


def _analyze_runs(run_specs, options: AnalysisOptions, out: Path, thresholds, outputs_root,
                  sweep: dict) -> AnalyzeResult:
    from mammography.runs import expand_folds, open_runs

    runs = expand_folds(open_runs(run_specs, outputs_root=outputs_root))
    if not runs:
        raise ConfigError("no run to analyse; give at least one --run")
    labels = run_labels(runs)
    result = AnalyzeResult(analyses=[], labels=labels, consistency=None, out_dir=out)
    for run in runs:
        result.analyses.append(analyze_run(run, options, **sweep))
    if len(runs) >= 2:
        shared = set.intersection(*(set(a.image_paths) for a in result.analyses))
        if shared:
            result.consistency = compare_runs(result.analyses, thresholds)
        else:
            result.notes.append(
                "the runs share no validation image, so no cross-seed consistency was computed "
                "(train the seeds on one split with train-density --split-seed)"
            )
    return result


# ---------------------------------------------------------------------------
# reading back
# ---------------------------------------------------------------------------


def load_run_analysis(path: str | Path) -> RunAnalysis:
    """Read an analysis written by :meth:`RunAnalysis.write` (no model, no images needed).

    Faithfulness curves are not kept on disk: ``faithfulness`` is None and
    the numbers are in ``summary["faithfulness"]``.
    """
    folder = Path(path)
    files = {k: folder / v for k, v in ANALYSIS_FILES.items()}
    for key in ("per_image", "summary", "arrays"):
        if not files[key].is_file():
            raise RunError(f"{folder} has no {files[key].name}; run 'mammography analyze --run RUN --out {folder}' first")
    summary = json.loads(files["summary"].read_text(encoding="utf-8"))
    table = pd.read_csv(files["per_image"])
    with np.load(files["arrays"], allow_pickle=False) as z:
        maps = z["maps"]
        geometries = [Geometry.from_dict(d) for d in json.loads(str(z["geometries"]))]
        shapes = [tuple(int(v) for v in s) for s in z["grid_shapes"]]
        n_markers = z["n_markers"]
        breast_bits, marker_bits = z["breast_bits"], z["marker_bits"]
        # analyses written before film edges were measured have none
        n_edges = z["n_film_edges"] if "n_film_edges" in z.files else np.zeros(len(shapes), dtype=np.int64)
        edge_index = z["film_edge_index"].tolist() if "film_edge_index" in z.files else []
        edge_bits = z["film_edge_bits"] if "film_edge_bits" in z.files else np.zeros(0, dtype=np.uint8)
    edges, edge_offset = {}, 0
    for k in edge_index:
        size = (shapes[k][0] * shapes[k][1] + 7) // 8
        edges[k] = edge_bits[edge_offset : edge_offset + size]
        edge_offset += size
    regions, offset = [], 0
    for k, shape in enumerate(shapes):
        size = (shape[0] * shape[1] + 7) // 8
        regions.append(
            ImageRegions(shape, breast_bits[offset : offset + size], marker_bits[offset : offset + size],
                         int(n_markers[k]), edges.get(k), int(n_edges[k]))
        )
        offset += size
    opts = {k: v for k, v in summary.get("options", {}).items() if k in {f.name for f in dataclasses.fields(AnalysisOptions)}}
    opts["spurious"] = SpuriousThresholds.from_dict(opts.get("spurious"))
    for k in ("cache_dir", "roi_dir", "manifest"):
        opts[k] = None if opts.get(k) is None else Path(opts[k])
    options = AnalysisOptions(**opts)
    run_info = summary["run"]
    loc = files["localisation"]
    pat = files["patterns"]
    return RunAnalysis(
        run_id=run_info["run_id"],
        seed=run_info.get("seed"),
        run_path=Path(run_info["path"]),
        table=table,
        maps=maps,
        geometries=geometries,
        regions=regions,
        options=options,
        summary=summary,
        localisation=pd.read_csv(loc) if loc.is_file() else None,
        patterns=pd.read_csv(pat) if pat.is_file() else None,
    )
