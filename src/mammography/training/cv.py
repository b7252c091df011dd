"""K-fold cross-validation of the density model, by patient.

:func:`cross_validate` is ``mammography cross-validate``. It writes::

    <outdir>/results_k{K}_seed{S}/
        cv_split.csv          image_path, patient_id, fold (1..K)
        fold_1/results/       a complete run directory (see train-density)
        ...
        fold_K/results/
        cv_summary.json       per-fold metrics, mean, std, 95 % CI

Fold ``i`` trains on the other K-1 folds and validates on fold ``i``. Folds
are patient-grouped and stratified by class
(:func:`mammography.data.splits.kfold_patients`). If
``results_k{K}_seed{S}`` already exists, the next free name
``results_k{K}_seed{S}_1``, ``_2`` ... is used (same rule as train-density).

The standard deviation uses ``ddof=1``; the 95 % confidence interval of the
mean is ``mean ± t(0.975, n-1) · std / sqrt(n)`` (Student's t), clipped to
the metric's range (:data:`~mammography.training.metrics.METRIC_RANGES`: an
accuracy interval never goes below 0 or above 1); ``ci95_unclipped`` keeps the
t-interval itself and ``ci95_clipped`` says whether clipping changed it. A
metric that is undefined in some fold (e.g. ``auc_ovr`` when a fold holds one
class) is summarised over the folds where it is defined (``n`` says how
many); std and CI are ``None`` with fewer than two values.

A fold whose model predicts one class for every validation image, or whose
validation images are all of one class, is logged as a warning and listed in
``cv_summary.json``'s ``warnings``; :func:`summary_lines` is the summary
``mammography cross-validate`` prints at the end.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from mammography.data.splits import kfold_patients, patient_grouping, split_table
from mammography.training.metrics import METRIC_RANGES, SCALAR_METRICS
from mammography.training.reproducibility import collect_reproducibility
from mammography.training.rundir import (
    RUN_FILES,
    discard_staging,
    publish_run_dir,
    staging_run_dir,
    write_csv,
    write_json,
)
from mammography.machine import resolve_device
from mammography.training.train import TrainConfig, load_training_manifest, train_on_split, warn_collapse

__all__ = ["DEFAULT_CV_OUTDIR", "cross_validate", "summarise_folds", "summary_lines"]

log = logging.getLogger(__name__)

DEFAULT_CV_OUTDIR = Path("outputs/density_experiments")


def _describe(values: list[float | None], confidence: float = 0.95,
              bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    """mean, std (ddof=1), t-based CI of the mean over the defined values, clipped to ``bounds``."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    n = int(len(defined))
    empty = {"ci95": [None, None], "ci95_unclipped": [None, None], "ci95_clipped": False,
             "range": [bounds[0] if math.isfinite(bounds[0]) else None,
                       bounds[1] if math.isfinite(bounds[1]) else None]}
    if n == 0:
        return {"mean": None, "std": None, **empty, "n": 0}
    mean = float(defined.mean())
    if n < 2:
        return {"mean": mean, "std": None, **empty, "n": n}
    std = float(defined.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    clipped = [max(low, bounds[0]), min(high, bounds[1])]
    return {"mean": mean, "std": std, **empty, "ci95": clipped, "ci95_unclipped": [low, high],
            "ci95_clipped": clipped != [low, high], "n": n}


def summarise_folds(fold_metrics: list[dict]) -> dict:
    """Mean, std and 95 % CI (clipped to each metric's range) of each scalar metric over folds.

    Parameters
    ----------
    fold_metrics : one metrics dict per fold (keys of
        :data:`~mammography.training.metrics.SCALAR_METRICS`).

    Returns
    -------
    ``{"metrics": {name: {"mean", "std", "ci95": [low, high], "ci95_unclipped",
    "ci95_clipped", "range", "n"}}, "mean": {name: ...}, "std": {name: ...},
    "ci95": {name: [low, high]}}``.
    """
    described = {name: _describe([m.get(name) for m in fold_metrics], bounds=METRIC_RANGES[name])
                 for name in SCALAR_METRICS}
    return {
        "metrics": described,
        "mean": {name: d["mean"] for name, d in described.items()},
        "std": {name: d["std"] for name, d in described.items()},
        "ci95": {name: d["ci95"] for name, d in described.items()},
    }


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_lines(cv_summary: dict) -> list[str]:
    """The end-of-run summary of a cross-validation: per metric mean ± sd and the clipped 95 % t-interval.

    Intervals that clipping changed are listed with their unclipped ends;
    the fold warnings follow.
    """
    k = cv_summary.get("k")
    lines = [f"validation metrics over {k} folds: mean \u00b1 sd (ddof=1), 95 % t-interval of the mean"]
    clipped = []
    for name in SCALAR_METRICS:
        d = cv_summary["metrics"][name]
        if d["mean"] is None:
            lines.append(f"  {name:<16} undefined in every fold")
            continue
        spread = f" \u00b1 {_fmt(d['std'])}" if d["std"] is not None else ""
        interval = (f"  [{_fmt(d['ci95'][0])}, {_fmt(d['ci95'][1])}]{' *' if d['ci95_clipped'] else ''}"
                    if d["ci95"][0] is not None else "")
        folds = f"  ({d['n']} of {k} folds define it)" if d["n"] != k else ""
        lines.append(f"  {name:<16} {_fmt(d['mean'])}{spread}{interval}{folds}")
        if d["ci95_clipped"]:
            lo, hi = d["range"]
            clipped.append(f"{name} to [{_fmt(lo, 0)}, {_fmt(hi, 0)}] (t-interval {_fmt(d['ci95_unclipped'][0])} "
                           f"to {_fmt(d['ci95_unclipped'][1])})")
    if clipped:
        lines.append("  * clipped to the metric's range: " + "; ".join(clipped))
    lines += [f"warning: {w}" for w in cv_summary.get("warnings", [])]
    return lines


def cross_validate(config: TrainConfig, folds: int = 5) -> Path:
    """Train and validate ``folds`` models on patient-level folds.

    Parameters
    ----------
    config : training options (see :class:`~mammography.training.train.TrainConfig`);
        ``outdir`` is the experiments folder, ``seed`` draws the folds and
        initialises every fold's model, ``val_frac`` and
        ``use_manifest_split`` are not used.
    folds : K, at least 2.

    Returns
    -------
    The CV folder ``<outdir>/results_k{K}_seed{S}`` (or its next free name).
    """
    config = copy.copy(config)
    config.validate()
    df = load_training_manifest(config)
    log.info("patients: %s", patient_grouping(df).description)
    assignment = kfold_patients(df, k=folds, seed=config.seed)
    resolve_device(config.device)  # fail before creating folders
    base = f"results_k{int(folds)}_seed{int(config.seed)}"
    # the whole cross-validation is written in a temporary folder, named when every fold is done
    root = staging_run_dir(config.outdir, base=base)
    try:
        _cross_validate(config, folds, df, assignment, root)
        published = publish_run_dir(root, base=base)
    except BaseException:
        discard_staging(root)
        raise
    for fold in range(1, int(folds) + 1):
        warn_collapse(published / f"fold_{fold}" / "results")
    return published


def _cross_validate(config: TrainConfig, folds: int, df: pd.DataFrame, assignment: pd.Series, root: Path) -> None:
    write_csv(root / "cv_split.csv", split_table(df, assignment))
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    fold_records, warnings = [], []
    for fold in range(1, int(folds) + 1):
        run_dir = root / f"fold_{fold}" / "results"
        run_dir.mkdir(parents=True)
        split = pd.Series(np.where(assignment.to_numpy() == fold, "val", "train"), index=df.index, name="split")
        log.info("fold %d/%d: %d train / %d val images", fold, folds, int((split == "train").sum()), int((split == "val").sum()))
        train_on_split(
            df,
            split,
            config,
            run_dir,
            extra_summary={"fold": fold, "folds": int(folds), "cv_root": "../.."},  # relative: the root is renamed
        )
        summary = json.loads((run_dir / RUN_FILES["summary"]).read_text())
        metrics = json.loads((run_dir / RUN_FILES["metrics"]).read_text())
        # train_on_split has logged them; the summary collects them per fold
        warnings.extend(f"fold {fold}: {w}" for w in summary.get("warnings", []))
        fold_records.append(
            {
                "fold": fold,
                "run_dir": str(run_dir.relative_to(root)),
                "n_train": summary["split"]["n_train"],
                "n_val": summary["split"]["n_val"],
                "best_epoch": summary["best_epoch"],
                "saved_epoch": summary["saved_epoch"],
                "metrics": {name: metrics.get(name) for name in SCALAR_METRICS},
            }
        )
    cv_summary = {
        "k": int(folds),
        "seed": int(config.seed),
        "arch": "efficientnet_b0",
        "img_size": int(config.img_size),
        "epochs": int(config.epochs),
        "batch_size": int(config.batch_size),
        "lr": float(config.lr),
        "save_best": bool(config.save_best),
        "manifest": str(Path(config.csv).expanduser().resolve()),
        "split_file": "cv_split.csv",
        "folds": fold_records,
        **summarise_folds([record["metrics"] for record in fold_records]),
        "std_ddof": 1,
        "ci_method": "Student t, 95 % CI of the mean over folds, clipped to the metric's range",
        "warnings": warnings,
        "created_at": created_at,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reproducibility": collect_reproducibility(config.command_line),
    }
    write_json(root / "cv_summary.json", cv_summary)
