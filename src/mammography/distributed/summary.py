"""Reading an archive job back, streaming: flag rates, per-class patterns, cross-seed agreement.

:func:`summarise_archive` is ``mammography analyze --from DIR`` (and the
numbers of ``report-pack --from DIR``). It never holds more than one chunk
of the archive in memory:

* per run, the job table is read one shard at a time, only the columns
  needed, into running counts and sums: predictions and their agreement with
  the labels, the rate of images flagged for each kind of spurious attention
  (and the run's verdict by the rule of
  :func:`mammography.analysis.spurious.summarise_spurious`), mean shares and
  ratios, and the same per density class (``y_true``), with the attended
  breast share per class (does attention widen with density?);
* across runs (two or more), chunk by chunk: each run's maps of the chunk
  (one Zarr chunk per run) mapped onto the analysis grid and compared inside
  the breast (the first run's image facts) by
  :func:`mammography.analysis.image_consistency` -- the same per-image rule
  as ``analyze``; the per-image rows are appended to ``consistency.parquet``.

Means carry 95 % confidence intervals from the normal approximation
(mean +- 1.96 standard errors), which streaming allows; at archive sizes it
agrees with the bootstrap ``analyze`` uses on a validation set.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mammography.analysis.consistency import (
    HIGH_AGREEMENT,
    REASON_ARTEFACT,
    REASON_PREDICTIONS,
    REASON_REGIONS,
    ConsistencyThresholds,
)
from mammography.analysis.spurious import SPURIOUS_KINDS, SpuriousThresholds
from mammography.distributed.store import load_job
from mammography.errors import ConfigError

__all__ = ["ARCHIVE_FILES", "ArchiveSummary", "read_table", "summarise_archive", "summary_files"]

#: files :meth:`ArchiveSummary.files` writes
ARCHIVE_FILES = {"summary": "archive_summary.json", "runs": "archive_runs.csv", "by_class": "archive_by_class.csv",
                 "consistency": "consistency.parquet"}
#: per-image columns averaged per run and per class
MEAN_COLUMNS = (
    "confidence", "outside_breast_share", "border_share", "marker_share", "film_edge_share",
    "outside_breast_ratio", "border_ratio", "marker_enrichment", "film_edge_ratio", "marker_occlusion_drop",
    "dense_mass_share", "dense_margin", "attended_breast_share", "iou", "dice", "pointing_hit", "energy_pointing",
)
FLAG_COLUMNS = tuple(f"{k}_flag" for k in SPURIOUS_KINDS) + ("spurious_flag",)
_Z = 1.959963984540054


def read_table(folder: str | Path, columns=None, runs=None) -> pd.DataFrame:
    """The job table of a finished job (all of it, or some ``columns`` / run folders).

    For archives too large for memory, read the parts one at a time
    (``DIR/table/<run>/*.parquet``) or query them with DuckDB (README).
    """
    job = load_job(folder)
    parts = [Path(folder) / r["table"] / f"{c['shards'][r['folder']]}.parquet"
             for r in job["runs"] if runs is None or r["folder"] in runs for c in job["chunks"]]
    frames = [pd.read_parquet(p, columns=columns) for p in parts]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


class _Moments:
    """Running count, sum and sum of squares of the finite values seen."""

    def __init__(self):
        self.n, self.s, self.ss = 0, 0.0, 0.0

    def add(self, values) -> None:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        self.n += int(v.size)
        self.s += float(v.sum())
        self.ss += float((v * v).sum())

    def to_dict(self) -> dict:
        if not self.n:
            return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
        mean = self.s / self.n
        var = max(0.0, self.ss / self.n - mean * mean) * self.n / max(1, self.n - 1)
        half = _Z * math.sqrt(var / self.n) if self.n > 1 else 0.0
        return {"mean": mean, "low": mean - half, "high": mean + half, "n": self.n}


@dataclass
class _Tally:
    """Counts and sums of one run (or one class of a run)."""

    n: int = 0
    n_errors: int = 0
    n_labelled: int = 0
    n_correct: int = 0
    flags: dict = field(default_factory=lambda: {c: 0 for c in FLAG_COLUMNS})
    moments: dict = field(default_factory=lambda: {c: _Moments() for c in MEAN_COLUMNS})
    film_edges_seen: bool = False

    def add(self, t: pd.DataFrame) -> None:
        ok = t["error"].fillna("").astype(str) == ""
        self.n += int(ok.sum())
        self.n_errors += int((~ok).sum())
        t = t[ok]
        labelled = t["y_true"].to_numpy() > 0
        self.n_labelled += int(labelled.sum())
        self.n_correct += int((t["y_true"].to_numpy() == t["y_pred"].to_numpy())[labelled].sum())
        for c in FLAG_COLUMNS:
            if c in t.columns:
                self.flags[c] += int(t[c].fillna(False).astype(bool).sum())
        for c in MEAN_COLUMNS:
            if c in t.columns:
                self.moments[c].add(t[c].to_numpy(dtype=float))
        if "film_edge_area" in t.columns:
            self.film_edges_seen |= bool((t["film_edge_area"].to_numpy(dtype=float) > 0).any())

    def to_dict(self) -> dict:
        return {
            "n_images": self.n,
            "n_errors": self.n_errors,
            "accuracy": self.n_correct / self.n_labelled if self.n_labelled else math.nan,
            "flag_rates": {c[: -len("_flag")]: (self.flags[c] / self.n if self.n else math.nan) for c in FLAG_COLUMNS},
            "means": {c: m.to_dict() for c, m in self.moments.items()},
        }


def _verdict(tally: _Tally, thresholds: SpuriousThresholds) -> tuple[dict, list[str]]:
    """Per kind: flagged when the mean ratio (markers: enrichment) exceeds the per-image threshold or more
    than ``max_flag_rate`` of the images are flagged (the rule of ``summarise_spurious``)."""
    flagged, reasons = {}, []
    for kind in SPURIOUS_KINDS:
        if kind == "film_edge" and not tally.film_edges_seen:
            continue
        measure = "marker_enrichment" if kind == "marker" else f"{kind}_ratio"
        level = tally.moments[measure].to_dict()["mean"]
        rate = tally.flags[f"{kind}_flag"] / tally.n if tally.n else math.nan
        flagged[kind] = bool((np.isfinite(level) and level > thresholds.value(kind))
                             or (tally.n and rate > thresholds.max_flag_rate))
        if flagged[kind]:
            reasons.append(kind)
    return flagged, reasons


_RUN_COLUMNS = ("y_true", "y_pred", "error", "film_edge_area") + FLAG_COLUMNS + MEAN_COLUMNS


def _run_summary(folder: Path, job: dict, run: dict, thresholds: SpuriousThresholds) -> dict:
    total, by_class = _Tally(), {k: _Tally() for k in (1, 2, 3, 4)}
    predicted = np.zeros(5, dtype=np.int64)
    confusion = np.zeros((4, 4), dtype=np.int64)
    for chunk in job["chunks"]:
        path = folder / run["table"] / f"{chunk['shards'][run['folder']]}.parquet"
        t = _read_columns(path, _RUN_COLUMNS)
        total.add(t)
        ok = t[t["error"].fillna("").astype(str) == ""]
        predicted += np.bincount(ok["y_pred"].to_numpy(dtype=np.int64), minlength=5)[:5]
        labelled = ok[ok["y_true"] > 0]
        np.add.at(confusion, (labelled["y_true"].to_numpy(int) - 1, labelled["y_pred"].to_numpy(int) - 1), 1)
        for k, part in ok.groupby("y_true"):
            if int(k) in by_class:
                by_class[int(k)].add(part)
    flagged, reasons = _verdict(total, thresholds)
    classes = {str(k): t.to_dict() for k, t in by_class.items() if t.n}
    attended = {k: v["means"]["attended_breast_share"]["mean"] for k, v in classes.items()}
    values = [attended[k] for k in sorted(attended, key=int)]
    return {
        "run_id": run["run_id"], "label": run["label"], "seed": run["seed"], "folder": run["folder"],
        **total.to_dict(),
        "predicted": {str(k): int(predicted[k]) for k in range(1, 5)},
        "confusion": confusion.tolist(),
        "flagged": flagged, "reasons": reasons,
        "by_class": classes,
        "attention_by_class": {"attended_breast_share": attended,
                               "widens": bool(len(values) >= 2 and all(b >= a for a, b in zip(values, values[1:]))
                                              and values[-1] > values[0])},
    }


def _read_columns(path: Path, wanted) -> pd.DataFrame:
    import pyarrow.parquet as pq

    names = set(pq.read_schema(path).names)
    return pd.read_parquet(path, columns=[c for c in wanted if c in names])


# ----------------------------------------------------------------------------- cross-seed agreement


def _facts_masks(facts: pd.DataFrame, i: int) -> tuple[tuple[int, int], np.ndarray]:
    row = facts.iloc[i]
    grid = (int(row["grid_h"]), int(row["grid_w"]))
    bits = np.frombuffer(row["breast_bits"], dtype=np.uint8)
    return grid, np.unpackbits(bits, count=grid[0] * grid[1]).astype(bool).reshape(grid)


def _chunk_maps(folder: Path, run: dict, chunk: dict, layer: str):
    """A run's shard of a chunk: its record table and the maps of ``layer`` (one Zarr chunk)."""
    from mammography.cam.record import load_record

    record = load_record(folder / run["record"] / "shards" / chunk["shards"][run["folder"]])
    return record.table, np.asarray(record.layer(layer)[...], dtype=np.float32)


def _geometry(row, size: int):
    from mammography.io.geometry import Geometry

    return Geometry(original_shape=(int(row.orig_h), int(row.orig_w)), size=size,
                    resized_shape=(int(row.resized_h), int(row.resized_w)),
                    offset=(int(row.offset_top), int(row.offset_left)), flipped=bool(row.flipped))


def _consistency_chunk(folder: Path, job: dict, runs: list[dict], chunk: dict, thresholds) -> pd.DataFrame:
    """Per-image agreement of the runs on one chunk (images every run explained)."""
    from mammography.analysis import image_consistency, map_to_grid
    from mammography.analysis.consistency import consistency_table

    first = runs[0]
    facts = pd.read_parquet(folder / "facts" / first["group"] / f"{chunk['facts'][first['group']]}.parquet",
                            columns=["image_path", "grid_h", "grid_w", "breast_bits", "error"])
    parts = []
    for run in runs:
        layer = job["metrics_layer"][run["folder"]]
        table, maps = _chunk_maps(folder, run, chunk, layer)
        flags = _read_columns(folder / run["table"] / f"{chunk['shards'][run['folder']]}.parquet",
                              ("marker_flag", "border_flag", "confidence", "error"))
        size = int(run["provenance"]["preprocessing"]["img_size"])
        parts.append((run["label"], table, maps, flags, size))
    records = []
    for i in range(int(chunk["n_images"])):
        if facts["error"].iloc[i] or any(p[3]["error"].iloc[i] for p in parts):
            continue
        grid, breast = _facts_masks(facts, i)
        maps, preds, confs, artefacts = {}, {}, {}, {}
        for label, table, stack, flags, size in parts:
            row = table.iloc[i]
            y_pred = int(row["y_pred"])
            heat = stack[i, y_pred - 1] if stack.ndim == 4 else stack[i]
            maps[label] = map_to_grid(heat, _geometry(row, size), grid)
            preds[label] = y_pred
            confs[label] = float(flags["confidence"].iloc[i])
            artefacts[label] = bool(flags["marker_flag"].iloc[i] or flags["border_flag"].iloc[i])
        records.append(image_consistency(str(facts["image_path"].iloc[i]), maps, preds, confs, within=breast,
                                         artefact_flags=artefacts, thresholds=thresholds,
                                         y_true=int(parts[0][1]["y_true"].iloc[i]) or None))
    table = consistency_table(records)
    if not table.empty:
        table["y_true"] = table["y_true"].astype("Int64")
        index = {p: chunk["start"] + k for k, p in enumerate(facts["image_path"].astype(str))}
        table.insert(0, "archive_index", table["image_path"].map(index).astype("int64"))
        table = table.sort_values("archive_index", kind="stable").reset_index(drop=True)
    return table


class _Agreement:
    """Running counts of the per-image consistency rows (overall and per class)."""

    def __init__(self):
        self.n = self.high = self.agree = 0
        self.rho, self.iou = _Moments(), _Moments()
        self.reasons = {REASON_PREDICTIONS: 0, REASON_REGIONS: 0, REASON_ARTEFACT: 0}
        self.by_class: dict[int, list[int]] = {}

    def add(self, t: pd.DataFrame) -> None:
        if t.empty:
            return
        high = (t["agreement"] == HIGH_AGREEMENT).to_numpy()
        agree = t["predictions_agree"].to_numpy(dtype=bool)
        self.n += len(t)
        self.high += int(high.sum())
        self.agree += int(agree.sum())
        self.rho.add(t["mean_rank_correlation"].to_numpy(dtype=float))
        self.iou.add(t["mean_top_iou"].to_numpy(dtype=float))
        for text in t["reasons"].fillna(""):
            for reason in filter(None, str(text).split(";")):
                self.reasons[reason] = self.reasons.get(reason, 0) + 1
        for y, h, a in zip(t["y_true"].fillna(0).astype(int), high, agree):
            entry = self.by_class.setdefault(int(y), [0, 0, 0])
            entry[0] += 1
            entry[1] += int(h)
            entry[2] += int(a)

    def to_dict(self, labels: list[str], thresholds: ConsistencyThresholds) -> dict:
        n = self.n
        return {
            "runs": labels, "n_images": n, "n_high_agreement": self.high, "n_low_agreement": n - self.high,
            "high_agreement_rate": self.high / n if n else math.nan,
            "prediction_agreement_rate": self.agree / n if n else math.nan,
            "mean_rank_correlation": self.rho.to_dict(), "mean_top_iou": self.iou.to_dict(),
            "reasons": self.reasons, "thresholds": thresholds.to_dict(), "within": "breast mask",
            "by_class": {str(k): {"n_images": v[0], "high_agreement_rate": v[1] / v[0],
                                  "prediction_agreement_rate": v[2] / v[0]}
                         for k, v in sorted(self.by_class.items()) if k > 0},
        }


# ----------------------------------------------------------------------------- the summary


@dataclass(eq=False)
class ArchiveSummary:
    """What :func:`summarise_archive` found.

    Attributes
    ----------
    folder : the job folder.
    job : its ``job.json``.
    runs : one summary dict per run (see :func:`summarise_archive`).
    consistency : cross-seed agreement, or None (one run).
    consistency_parts : per-image agreement tables, chunk by chunk (a
        generator's output, kept only when asked).
    """

    folder: Path
    job: dict
    runs: list[dict]
    consistency: dict | None
    consistency_file: Path | None = None

    def to_dict(self) -> dict:
        return {"job": {"folder": str(self.folder), "manifest": self.job["manifest"],
                        "n_images": self.job["manifest"]["n_images"], "settings": self.job["settings"],
                        "metrics_layer": self.job["metrics_layer"]},
                "runs": self.runs, "consistency": self.consistency}

    def runs_table(self) -> pd.DataFrame:
        """One row per run: images, errors, accuracy, flag rates, verdicts."""
        rows = []
        for r in self.runs:
            row = {"run": r["label"], "run_id": r["run_id"], "n_images": r["n_images"], "n_errors": r["n_errors"],
                   "accuracy": r["accuracy"]}
            row.update({f"{k}_flag_rate": v for k, v in r["flag_rates"].items()})
            row["flagged_for"] = ";".join(r["reasons"])
            rows.append(row)
        return pd.DataFrame(rows)

    def by_class_table(self) -> pd.DataFrame:
        """One row per run and density class: images, flag rates, mean pattern metrics."""
        rows = []
        for r in self.runs:
            for k, c in r["by_class"].items():
                row = {"run": r["label"], "y_true": int(k), "n_images": c["n_images"], "accuracy": c["accuracy"]}
                row.update({f"{f}_flag_rate": v for f, v in c["flag_rates"].items()})
                for m in ("dense_margin", "attended_breast_share", "marker_share", "outside_breast_share"):
                    row[m] = c["means"][m]["mean"]
                rows.append(row)
        return pd.DataFrame(rows)

    def lines(self) -> list[str]:
        """A few lines for the terminal."""
        out = []
        for r in self.runs:
            verdict = (f"flagged ({', '.join(k.replace('_', ' ') for k in r['reasons'])})" if r["reasons"]
                       else "not flagged")
            acc = "" if not np.isfinite(r["accuracy"]) else f", accuracy {100 * r['accuracy']:.1f} %"
            errors = f", {r['n_errors']} unreadable" if r["n_errors"] else ""
            out.append(f"run {r['label']}: {r['n_images']} images{errors}{acc}; spurious attention {verdict} "
                       f"({100 * r['flag_rates']['spurious']:.1f} % of images flagged)")
        if self.consistency is not None:
            c = self.consistency
            out.append(f"consistency: {c['n_high_agreement']} of {c['n_images']} images high agreement across "
                       f"runs {', '.join(c['runs'])}; predictions agree on "
                       f"{100 * c['prediction_agreement_rate']:.1f} %")
        return out


def summarise_archive(folder: str | Path, *, runs=None, thresholds: ConsistencyThresholds = ConsistencyThresholds(),
                      consistency_file: str | Path | None = None, progress: bool = False) -> ArchiveSummary:
    """Aggregate a finished archive job, one chunk at a time (module docstring).

    Parameters
    ----------
    folder : the job folder (``explain --engine ray --out``).
    runs : labels or run ids of the runs to include (default: all).
    thresholds : when two runs' maps agree.
    consistency_file : where the per-image agreement rows go (Parquet,
        written chunk by chunk through a temporary file); None keeps only
        the summary.
    progress : a progress bar over the chunks.

    Returns
    -------
    ArchiveSummary: per run ``n_images``, ``n_errors``, ``accuracy``,
    ``predicted`` (class -> images), ``confusion`` (4 x 4, rows = labels),
    ``flag_rates`` (kind -> share of images), ``flagged``/``reasons`` (the
    run's verdict per kind), ``means`` (column -> mean with 95 % CI),
    ``by_class`` (the same per label), ``attention_by_class`` (attended
    breast share per class and whether it widens); ``consistency`` as
    :func:`mammography.analysis.consistency.summarise_consistency` plus
    ``by_class``.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    job = load_job(folder)
    chosen = job["runs"]
    if runs:
        wanted = {str(r) for r in runs}
        chosen = [r for r in job["runs"] if {str(r["label"]), r["run_id"], r["folder"]} & wanted]
        missing = wanted - {x for r in chosen for x in (str(r["label"]), r["run_id"], r["folder"])}
        if missing:
            raise ConfigError(f"{folder} has no run {', '.join(sorted(missing))}; it has "
                              f"{', '.join(str(r['label']) for r in job['runs'])}")
    spurious = SpuriousThresholds.from_dict(job["settings"].get("spurious"))
    run_summaries = [_run_summary(folder, job, r, spurious) for r in chosen]
    agreement = None
    written = None
    if len(chosen) >= 2:
        tally = _Agreement()
        writer = _ParquetStream(Path(consistency_file)) if consistency_file is not None else None
        try:
            for chunk in tqdm(job["chunks"], desc="consistency", unit="chunk", disable=not progress, leave=False):
                part = _consistency_chunk(folder, job, chosen, chunk, thresholds)
                tally.add(part)
                if writer is not None:
                    writer.write(part)
            written = writer.close() if writer is not None else None
        finally:
            if writer is not None:
                writer.abort()
        agreement = tally.to_dict([str(r["label"]) for r in chosen], thresholds)
        agreement["run_ids"] = {str(r["label"]): r["run_id"] for r in chosen}
    return ArchiveSummary(folder, job, run_summaries, agreement, written)


class _ParquetStream:
    """Rows appended chunk by chunk to a temporary Parquet file, renamed into place at :meth:`close`."""

    def __init__(self, path: Path):
        from mammography.atomic import temp_path

        self.path = path
        self.tmp = temp_path(path)
        self.writer = None
        self.schema = None

    def write(self, table: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if table.empty:
            return
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            batch = pa.Table.from_pandas(table, preserve_index=False)
            self.schema = batch.schema
            self.writer = pq.ParquetWriter(self.tmp, self.schema)
        else:
            batch = pa.Table.from_pandas(table, schema=self.schema, preserve_index=False)
        self.writer.write_table(batch)

    def close(self) -> Path | None:
        import os

        if self.writer is None:
            return None
        self.writer.close()
        self.writer = None
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.tmp.exists():
            self.tmp.unlink()


def summary_files(summary: ArchiveSummary) -> dict[str, bytes]:
    """``archive_summary.json``, ``archive_runs.csv`` and ``archive_by_class.csv`` by name."""
    from mammography.csvfiles import csv_bytes
    from mammography.distributed.store import json_safe

    return {
        ARCHIVE_FILES["summary"]: (json.dumps(json_safe(summary.to_dict()), indent=2) + "\n").encode("utf-8"),
        ARCHIVE_FILES["runs"]: csv_bytes(summary.runs_table(), float_format="%.6g"),
        ARCHIVE_FILES["by_class"]: csv_bytes(summary.by_class_table(), float_format="%.6g"),
    }
