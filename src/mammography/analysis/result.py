"""A run's analysis as a result: :class:`RunAnalysis`, :class:`ConsistencyResult`, their files, reading back.

:meth:`RunAnalysis.write` writes :data:`ANALYSIS_FILES` (each atomically),
:func:`load_run_analysis` reads them back without the model or the images;
:meth:`ConsistencyResult.write` writes :data:`CONSISTENCY_FILES`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mammography.analysis.consistency import ImageConsistency
from mammography.analysis.facts import ImageRegions
from mammography.analysis.faithfulness import FaithfulnessResult, SanityResult
from mammography.analysis.maps import map_to_grid
from mammography.analysis.options import AnalysisOptions
from mammography.atomic import write_atomic
from mammography.csvfiles import csv_bytes
from mammography.errors import RunError
from mammography.io.geometry import Geometry

__all__ = ["ANALYSIS_FILES", "CONSISTENCY_FILES", "ConsistencyResult", "RunAnalysis", "load_run_analysis"]

#: files :meth:`RunAnalysis.write` creates (some only when there is data for them)
ANALYSIS_FILES = {
    "per_image": "attention_per_image.csv",
    "summary": "attention_summary.json",
    "arrays": "attention_maps.npz",
    "localisation": "localisation_by_class.csv",
    "patterns": "patterns_by_class.csv",
    "faithfulness": "faithfulness_per_image.csv",
}
#: files :meth:`ConsistencyResult.write` creates
CONSISTENCY_FILES = {"table": "consistency.csv", "summary": "consistency_summary.json"}


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
    options = AnalysisOptions.from_dict(summary.get("options"))
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
