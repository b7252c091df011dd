"""Cross-validation runs written by the earlier ``mammography-pipelines`` project, read as they are.

That project's ``cross-validate`` writes::

    <outdir>/cv_summary.json          n_folds, cv_seed, config, results, aggregated_metrics
    <outdir>/fold_0 .. fold_{k-1}/    metrics.json (no per-fold predictions)
    <outdir>/fold_{k-1}/best_model.pt the last fold only, unless --save-all-folds

Facts of its code that decide how these files can be used:

* its fold loop read the validation metrics under names its validation
  never wrote (``accuracy``, ``kappa``, ``auc`` for ``acc``,
  ``kappa_quadratic``, ``auc_ovr``), so every fold's stored accuracy and
  kappa are 0.0 and its AUC is missing. They are shown as missing, with that
  reason, never as results. Its "best" epoch was chosen by that accuracy, so
  it is always epoch 1: a fold's ``best_model.pt`` holds the first epoch's
  weights, and the stored macro-F1 is that epoch's;
* its folds are deterministic: scikit-learn's ``StratifiedGroupKFold``
  (``shuffle=True``, ``random_state=cv_seed``) over the accessions of the
  data set, each accession labelled by its most frequent class
  (``StratifiedKFold`` over the images when there is no accession). So a
  fold's validation images can be rebuilt from the manifest recorded in
  ``cv_summary.json`` -- checked against the fold sizes the run recorded --
  and, where that fold's checkpoint exists, the fold can be explained like
  any run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from mammography.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mammography.errors import ConfigError, ManifestError, RunError
from mammography.runs import (
    PIPELINES_WRITER,
    PROB_COLUMNS,
    CVRun,
    FoldRecord,
    Run,
    _as_triple,
    _find_checkpoint,
    _fold_number,
    _int_value,
    _read_json,
)
from mammography.training.metrics import SCALAR_METRICS

__all__ = ["METRICS_BUG_NOTE", "load_pipelines_cv", "rebuild_validation_folds"]

log = logging.getLogger(__name__)

METRICS_BUG_NOTE = (
    "the earlier project's cross-validation stored accuracy and kappa as 0.0 for every fold (it read metric "
    "names its validation never wrote), so they are left out; for the same reason its 'best' epoch is always "
    "epoch 1, which is what a fold's best_model.pt holds"
)


def load_pipelines_cv(root: Path, fold_dirs: list[Path], summary: dict) -> CVRun:
    """A :class:`~mammography.runs.CVRun` of the earlier project's layout (module docstring).

    Folds whose validation images can be rebuilt and whose ``best_model.pt``
    exists become :class:`~mammography.runs.Run` objects; every fold gets a
    :class:`~mammography.runs.FoldRecord` with the metrics its files state
    and, for the others, one line saying what is missing.
    """
    config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    k = _int_value(summary.get("n_folds")) or len(fold_dirs)
    rebuilt = rebuild_validation_folds(root, summary)
    records, runs, notes = [], [], []
    for fold_dir in fold_dirs:
        number = _fold_number(fold_dir)
        raw = _read_json(fold_dir / "metrics.json") if (fold_dir / "metrics.json").is_file() else {}
        metrics = _stated_metrics(raw)
        record = FoldRecord(number, metrics, metrics_note=METRICS_BUG_NOTE if raw else "")
        checkpoint = fold_dir / "best_model.pt"
        if isinstance(rebuilt, str):
            record.missing = f"fold {number}: validation images not rebuilt ({rebuilt})"
        elif not checkpoint.is_file():
            record.missing = (f"fold {number}: no best_model.pt (the earlier project saves only the last fold's "
                              "weights unless run with --save-all-folds)")
        elif number not in rebuilt:
            record.missing = f"fold {number}: not among the {len(rebuilt)} rebuilt folds"
        else:
            rows, stated = rebuilt[number], _int_value(raw.get("val_size"))
            if stated is not None and stated != len(rows):
                record.missing = (f"fold {number}: the rebuilt validation set has {len(rows)} images, the run "
                                  f"recorded {stated}; the data set changed since")
            else:
                record.run = _fold_run(root, fold_dir, number, rows, config, summary, raw, metrics)
                runs.append(record.run)
        if record.missing:
            notes.append(record.missing)
        records.append(record)
    seed = _int_value(config.get("seed"))
    return CVRun(root=root, seed=seed, k=k, folds=runs, summary=summary, records=records,
                 writer=PIPELINES_WRITER, notes=notes)


def _stated_metrics(raw: dict) -> dict:
    """The scalar metrics a fold's metrics.json states correctly (module docstring)."""
    out = {key: None for key in SCALAR_METRICS}
    value = raw.get("best_val_macro_f1")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out["macro_f1"] = float(value)
    return out


def _training_folder(root: Path, config: dict) -> Path | None:
    """The folder the earlier project ran in: ``root`` minus its recorded relative outdir."""
    outdir = config.get("outdir")
    if not isinstance(outdir, str) or not outdir.strip():
        return None
    parts = Path(outdir).parts
    if Path(outdir).is_absolute() or len(parts) > len(root.parts) or root.parts[-len(parts):] != parts:
        return None
    return root.parents[len(parts) - 1]


def _locate(value, bases: list[Path], what: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise RunError(f"cv_summary.json records no {what}")
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [base / path for base in bases]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise RunError(f"{what} {value} not found (tried {', '.join(map(str, candidates))})")


def rebuild_validation_folds(root: Path, summary: dict) -> dict[int, pd.DataFrame] | str:
    """Every fold's validation rows (``image_path``, ``density_label``, ``accession`` ...)
    as the earlier project's split made them, or one line saying why that is impossible.

    The manifest is the CSV (and DICOM folder) recorded in ``cv_summary.json``,
    looked up from the folder the run was made in (the CV folder minus its
    recorded ``outdir``) and from the working directory.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    from mammography.data.manifest import load_manifest

    config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    k, seed = _int_value(summary.get("n_folds")), _int_value(summary.get("cv_seed"))
    if k is None or seed is None:
        return "cv_summary.json lacks n_folds or cv_seed"
    if _int_value(config.get("subset")) not in (None, 0):
        return "the run used --subset, whose rows cannot be reproduced"
    if config.get("classes", "multiclass") not in ("multiclass", "density", 4, "4"):
        return f"the run trained {config.get('classes')!r} classes, not the four density classes"
    if config.get("include_class_5"):
        return "the run kept class 5"
    bases = [b for b in (_training_folder(root, config), Path.cwd()) if b is not None]
    try:
        csv = _locate(config.get("csv"), bases, "manifest")
        dicom_root = _locate(config.get("dicom_root"), bases, "DICOM folder") if config.get("dicom_root") else None
        table = load_manifest(csv, dicom_root=dicom_root)
    except (RunError, ManifestError, ConfigError) as exc:
        return str(exc)
    target = table["density_label"].astype(int) - 1
    if "accession" in table and table["accession"].notna().any():
        by_group = pd.DataFrame({"accession": table["accession"], "_target": target})
        group_targets = by_group.groupby("accession")["_target"].agg(lambda s: s.value_counts().idxmax())
        groups, group_y = group_targets.index.to_numpy(), group_targets.to_numpy()
        if len(groups) < k:
            return f"{len(groups)} accessions for {k} folds"
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = {
            n: table[table["accession"].isin(groups[val])].reset_index(drop=True)
            for n, (_, val) in enumerate(splitter.split(groups, group_y, groups=groups))
        }
    else:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = {n: table.iloc[val].reset_index(drop=True)
                 for n, (_, val) in enumerate(splitter.split(table, target.to_numpy()))}
    return folds


def _fold_run(root: Path, fold_dir: Path, number: int, rows: pd.DataFrame, config: dict, summary: dict,
              raw: dict, metrics: dict) -> Run:
    """A fold with rebuilt validation images and no stored predictions."""
    source = root / "cv_summary.json"
    img_size = _int_value(config.get("img_size"))
    if img_size is None:
        raise RunError(f"{source} records no img_size; the fold's model input size must be known")
    from mammography.io.pipelines import memory_cache_used

    preprocessing = Preprocessing.pipelines_crop(
        img_size,
        _as_triple(config.get("mean"), IMAGENET_MEAN, "mean", source),
        _as_triple(config.get("std"), IMAGENET_STD, "std", source),
        source="earlier mammography-pipelines cross-validation (cv_summary.json has no preprocess record)",
        thumbnail=memory_cache_used(config.get("cache_mode"), rows["image_path"]),
    )
    predictions = pd.DataFrame({"image_path": rows["image_path"].astype(str), "y_true": rows["density_label"].astype(int)})
    for column in ("accession", "patient_id", "view", "laterality"):
        if column in rows:
            predictions[column] = rows[column].to_numpy()
    n = len(predictions)
    return Run(
        path=fold_dir,
        run_id=f"{root.name}/fold_{number}",
        seed=_int_value(config.get("seed")),
        checkpoint=_find_checkpoint(fold_dir),
        predictions=predictions,
        probabilities=np.full((n, len(PROB_COLUMNS)), np.nan),
        metrics=metrics,
        preprocessing=preprocessing,
        summary={**summary, "fold_metrics": raw},
        fold=number,
        metrics_raw=raw,
        writer=PIPELINES_WRITER,
        checkpoint_epoch=_int_value(raw.get("best_epoch")),
        metrics_source=f"fold_{number}/metrics.json",
    )
