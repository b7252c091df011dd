"""Read and validate trained run directories, ours and the earlier project's.

One call turns a path into a :class:`Run` (or a :class:`CVRun` for a
cross-validation root) whose fields no longer depend on which tool wrote it.

Supported layouts
-----------------
Single run (``mammography train-density`` or ``mammography-pipelines``)::

    <run>/best_model.pth | best_model.pt      weights (any form models.checkpoint reads)
    <run>/summary.json                        seed, img_size, mean, std, preprocess ...
    <run>/val_predictions.csv                 one row per validation image
    <run>/metrics/val_metrics.json            (or <run>/metrics.json in newer CV folds)
    <run>/train_history.csv                   not needed to read a run

Cross-validation root (``mammography cross-validate`` / the earlier project)::

    results_k3_seed42/cv_summary.json
    results_k3_seed42/fold_1/results/<run>    folds numbered from 1, or
    results_k3_seed42/fold_0/<run>            the newer variant, folds from 0

Normalisation rules
-------------------
* **Predictions** become ``image_path, y_true, y_pred, confidence, p_A..p_D``
  (labels 1..4), followed by whichever of ``accession, patient_id, view,
  laterality, roi_path, breast_mask_path`` exist, then any other columns.
  Shape (a) ``path, accession, raw_label, y_true, y_pred, probs`` has ``path``
  renamed and its stringified ``probs`` list parsed (JSON, or numpy's
  space-separated print; never ``eval``). ``confidence``, when absent, is the
  probability of the predicted class.
* **0- or 1-based labels** are decided per file, first rule that decides wins:

  1. a ``0`` among ``y_true``/``y_pred`` means 0-based, a ``4`` means
     1-based (both at once is an error);
  2. otherwise (all values in 1..3) ``y_pred`` is compared with the
     probabilities: 0-based if every ``y_pred`` indexes a row maximum as a
     0-based column, 1-based if it does so as a 1-based column;
  3. otherwise a label column (``raw_label``, ``professional_label``,
     ``density_label``, ``label``; 1..4 or A..D) equal to ``y_true`` means
     1-based, equal to ``y_true + 1`` means 0-based;
  4. otherwise the shape's convention: ``probs`` (shape a) 0-based,
     ``p_A..p_D`` 1-based.
* **Relative paths** (``image_path``, ``roi_path``, ``breast_mask_path``) are
  taken relative to the current working directory when the file exists there
  (the earlier project stored paths relative to where it was run), else
  relative to the run directory; the table holds absolute paths. Absolute
  paths are kept as they are. A missing image is not an error here.
* **Metrics**: ``acc, kappa_quadratic, macro_f1, auc_ovr, bal_acc,
  bal_acc_adj`` as float, ``None`` when absent or not finite. A missing
  ``bal_acc_adj`` is derived from ``bal_acc`` as scikit-learn does
  (chance = 1 / classes present in ``y_true``).
* **summary.json**: ``mean``/``std`` null (or absent) mean ImageNet
  statistics; ``preprocess.normalise_laterality`` (or a top-level
  ``normalise_laterality``) says whether right breasts were flipped, absent
  means False (the earlier project did not flip). The seed comes from
  ``summary.json``, else from a ``seed42`` in the folder names.
* **Run id** is the directory name; for a fold ``"<cv root>/fold_<n>"``.
"""

from __future__ import annotations

import ast
import glob
import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from mammography.data.labels import CLASS_LETTERS, parse_label
from mammography.errors import RunError
from mammography.models.checkpoint import checkpoint_sha256, load_density_checkpoint
from mammography.training.metrics import SCALAR_METRICS

__all__ = [
    "CVRun",
    "DEFAULT_RUN_FOLDERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Run",
    "is_cv_root",
    "load_cv_run",
    "load_run",
    "normalise_metrics",
    "resolve_runs",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: sub-folders of the outputs root where runs are written by default
#: (train-density, cross-validate)
DEFAULT_RUN_FOLDERS = ("mammo_efficientnetb0_density", "density_experiments")
#: probability column of class k (1..4) at index k - 1
PROB_COLUMNS = tuple(f"p_{letter}" for letter in CLASS_LETTERS)
CHECKPOINT_NAMES = ("best_model.pth", "best_model.pt")
#: metric files, ours first; the newer CV variant writes metrics.json at the root
METRICS_FILES = ("metrics/val_metrics.json", "metrics.json", "val_metrics.json")
PATH_COLUMNS = ("image_path", "roi_path", "breast_mask_path")
OPTIONAL_COLUMNS = ("accession", "patient_id", "view", "laterality", "roi_path", "breast_mask_path")
LABEL_COLUMNS = ("raw_label", "professional_label", "density_label", "label")
#: other names the same metric has had; canonical name first
METRIC_ALIASES = {
    "acc": ("acc", "accuracy"),
    "kappa_quadratic": ("kappa_quadratic", "quadratic_kappa", "qwk"),
    "macro_f1": ("macro_f1", "f1_macro"),
    "auc_ovr": ("auc_ovr", "roc_auc_ovr", "auc"),
    "bal_acc": ("bal_acc", "balanced_accuracy"),
    "bal_acc_adj": ("bal_acc_adj", "balanced_accuracy_adjusted"),
}
#: sub-dicts a metrics file may nest its numbers under
METRIC_SECTIONS = ("val", "val_metrics", "metrics", "best")
TRAIN_WRITER = "mammography train-density --save-best"
CV_WRITER = "mammography cross-validate"
_FOLD_RE = re.compile(r"^fold_(\d+)$")
_SEED_RE = re.compile(r"seed[_-]?(\d+)", re.IGNORECASE)
_K_RE = re.compile(r"(?:^|_)k(\d+)(?:_|$)")


@dataclass(eq=False)
class Run:
    """One trained run directory, normalised.

    Attributes
    ----------
    path : Path
        The run directory (absolute).
    run_id : str
        Directory name; ``"<cv root>/fold_<n>"`` for a cross-validation fold.
    seed : int or None
        Training seed (summary.json, else the folder name).
    checkpoint : Path
        ``best_model.pth`` (or the earlier project's ``best_model.pt``).
    predictions : pandas.DataFrame
        ``image_path`` (absolute), ``y_true``/``y_pred`` (1..4), ``confidence``,
        ``p_A..p_D``, then optional and extra columns (module docstring).
    probabilities : numpy.ndarray
        (N, 4) float64, row ``i`` = ``p_A..p_D`` of prediction ``i``.
    metrics : dict
        ``acc, kappa_quadratic, macro_f1, auc_ovr, bal_acc, bal_acc_adj`` ->
        float or None.
    img_size : int
        Side of the square model input.
    mean, std : tuple of 3 floats
        Input normalisation (ImageNet when summary.json has null).
    normalise_laterality : bool
        Whether right breasts were flipped before the model saw them.
    summary : dict
        summary.json as read.
    fold : int or None
        Fold number as in the folder name, for cross-validation folds.
    metrics_raw : dict
        The metrics file as read (confusion matrix, report ...).
    """

    path: Path
    run_id: str
    seed: int | None
    checkpoint: Path
    predictions: pd.DataFrame
    probabilities: np.ndarray
    metrics: dict
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    normalise_laterality: bool
    summary: dict
    fold: int | None = None
    metrics_raw: dict = field(default_factory=dict)

    @cached_property
    def checkpoint_sha256(self) -> str:
        """Hex SHA-256 of the checkpoint file (computed once, on first use)."""
        return checkpoint_sha256(self.checkpoint)

    def load_model(self, device="cpu") -> nn.Module:
        """The trained EfficientNet-B0, in eval mode on ``device``.

        Raises
        ------
        CheckpointError
            The checkpoint is unsafe, fused or does not fit (see
            :mod:`mammography.models.checkpoint`).
        """
        return load_density_checkpoint(self.checkpoint, num_classes=len(PROB_COLUMNS), device=device)


@dataclass(eq=False)
class CVRun:
    """A cross-validation root with its folds.

    Attributes
    ----------
    root : Path
        e.g. ``outputs/density_experiments/results_k3_seed42`` (absolute).
    seed : int or None
        cv_summary.json's seed, else the folder name's, else the first fold's.
    k : int
        Number of folds.
    folds : list[Run]
        In fold order; ``Run.fold`` keeps the folder's number (from 1, or
        from 0 in the newer variant).
    summary : dict
        cv_summary.json as read (``{}`` when the variant has none).
    """

    root: Path
    seed: int | None
    k: int
    folds: list[Run]
    summary: dict


# --------------------------------------------------------------------------- files


def _missing(path: Path, what: str = "a run directory needs it", writer: str = TRAIN_WRITER) -> RunError:
    return RunError(f"{path} is missing: {what} (written by {writer})")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _missing(path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is not valid JSON ({exc}); rewrite it or retrain the run") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


def _find_checkpoint(run_dir: Path) -> Path:
    for name in CHECKPOINT_NAMES:
        if (run_dir / name).is_file():
            return run_dir / name
    raise _missing(
        run_dir / CHECKPOINT_NAMES[0],
        f"a run directory needs its weights (also looked for {CHECKPOINT_NAMES[1]})",
    )


def _find_metrics(run_dir: Path) -> Path:
    for name in METRICS_FILES:
        if (run_dir / name).is_file():
            return run_dir / name
    raise _missing(run_dir / METRICS_FILES[0], f"a run directory needs it (also looked for {METRICS_FILES[1]})")


# --------------------------------------------------------------------------- summary


def _as_triple(value, default: tuple[float, float, float], key: str, source: Path) -> tuple[float, float, float]:
    """summary mean/std -> 3 floats; null -> ``default``; one value -> replicated."""
    if value is None:
        return default
    values = [value] if isinstance(value, (int, float)) else list(value) if isinstance(value, (list, tuple)) else None
    if values is None or len(values) not in (1, 3) or not all(isinstance(v, (int, float)) for v in values):
        raise RunError(f"{source}: {key} must be null, a number or 3 numbers, found {value!r}")
    values = values * 3 if len(values) == 1 else values
    return tuple(float(v) for v in values)


def _img_size(summary: dict, source: Path) -> int:
    value = summary.get("img_size", summary.get("image_size"))
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise RunError(
            f"{source} has no usable img_size (found {value!r}); the model's input size must be recorded "
            f"there (as {TRAIN_WRITER} does)"
        )
    return int(value)


def _normalise_laterality(summary: dict) -> bool:
    preprocess = summary.get("preprocess")
    if isinstance(preprocess, dict) and "normalise_laterality" in preprocess:
        return bool(preprocess["normalise_laterality"])
    return bool(summary.get("normalise_laterality", False))


def _seed(summary: dict, paths: list[Path]) -> int | None:
    seed = summary.get("seed")
    if isinstance(seed, (int, float)) and not isinstance(seed, bool) and int(seed) == seed:
        return int(seed)
    for path in paths:
        match = _SEED_RE.search(path.name)
        if match:
            return int(match.group(1))
    return None


# --------------------------------------------------------------------------- metrics


def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def normalise_metrics(raw: dict, y_true: np.ndarray | None = None) -> dict:
    """The six scalar metrics of a metrics file, float or None.

    Parameters
    ----------
    raw : dict
        The metrics JSON (keys as DESIGN section 2, a few aliases, or nested
        under ``val`` / ``val_metrics`` / ``metrics`` / ``best``).
    y_true : array of 1-based labels, optional
        Used only to derive ``bal_acc_adj`` from ``bal_acc`` when absent.
    """
    known = {alias for names in METRIC_ALIASES.values() for alias in names}
    if not known & set(raw):
        raw = next((raw[s] for s in METRIC_SECTIONS if isinstance(raw.get(s), dict) and known & set(raw[s])), raw)
    out = {}
    for key in SCALAR_METRICS:
        out[key] = next((_finite(raw[a]) for a in METRIC_ALIASES[key] if a in raw), None)
    if out["bal_acc_adj"] is None and out["bal_acc"] is not None and y_true is not None:
        n_present = len(np.unique(y_true))
        if n_present > 1:  # sklearn's adjusted balanced accuracy: chance -> 0
            chance = 1.0 / n_present
            out["bal_acc_adj"] = (out["bal_acc"] - chance) / (1.0 - chance)
    return out


# --------------------------------------------------------------------------- predictions


def _parse_prob_list(text, source: Path, row: int) -> list[float]:
    """One stringified probability list: JSON ``[0.1, ...]`` or numpy ``[0.1 0.2 ...]``."""
    if not isinstance(text, str):
        raise RunError(f"{source}: row {row + 2} has no probs list (found {text!r})")
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        try:
            values = ast.literal_eval(text)  # literals only: tuples, 'nan'-free python lists
        except (ValueError, SyntaxError):
            # numpy's print form "[0.1 0.2 0.3 0.4]", possibly wrapped over lines
            tokens = [t for t in re.split(r"[\s,]+", text.strip().strip("[]()")) if t]
            try:
                values = [float(t) for t in tokens]
            except ValueError:
                raise RunError(f"{source}: row {row + 2} probs {text!r} is not a list of numbers") from None
    if not isinstance(values, (list, tuple)) or len(values) != len(PROB_COLUMNS):
        raise RunError(f"{source}: row {row + 2} probs {text!r} should list {len(PROB_COLUMNS)} probabilities")
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise RunError(f"{source}: row {row + 2} probs {text!r} is not a list of numbers") from None


def _probabilities(table: pd.DataFrame, source: Path) -> np.ndarray:
    if all(c in table for c in PROB_COLUMNS):
        probs = table[list(PROB_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    elif "probs" in table:
        probs = np.array([_parse_prob_list(t, source, i) for i, t in enumerate(table["probs"])], dtype=np.float64)
    else:
        raise RunError(
            f"{source} has no probabilities: expected columns {', '.join(PROB_COLUMNS)} or a 'probs' list "
            f"(found: {', '.join(map(str, table.columns))})"
        )
    if not np.isfinite(probs).all() or (probs < -1e-6).any() or (probs > 1 + 1e-6).any():
        raise RunError(f"{source}: probabilities must be numbers in [0, 1] (are these logits?)")
    return probs


def _labels(table: pd.DataFrame, column: str, source: Path) -> np.ndarray:
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(values).all() or (values != np.round(values)).any():
        raise RunError(f"{source}: column {column} must hold whole class numbers on every row")
    return values.astype(int)


def _column_as_1based(table: pd.DataFrame, column: str) -> np.ndarray | None:
    """A label column parsed to 1..4 (letters or numbers), None if any cell does not parse."""
    try:
        parsed = [parse_label(v) for v in table[column]]
    except ValueError:
        return None
    if any(v is None for v in parsed):
        return None
    return np.asarray(parsed, dtype=int)


def _is_zero_based(table: pd.DataFrame, y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, source: Path) -> bool:
    """Decide the label base of a predictions file (rules in the module docstring)."""
    values = np.concatenate([y_true, y_pred])
    if ((values < 0) | (values > len(PROB_COLUMNS))).any():
        raise RunError(f"{source}: y_true/y_pred must be 1..4 (or 0..3), found {sorted(set(values.tolist()))}")
    has_zero, has_four = (values == 0).any(), (values == 4).any()
    if has_zero and has_four:
        raise RunError(f"{source}: labels span 0..4, neither 0..3 nor 1..4")
    if has_zero or has_four:
        return bool(has_zero)
    # rule 2: y_pred is the argmax of the probabilities (ties allowed)
    row_max = probs.max(axis=1)
    rows = np.arange(len(y_pred))
    fits_zero = bool(np.isclose(probs[rows, y_pred], row_max, atol=1e-6).all())
    fits_one = bool(np.isclose(probs[rows, y_pred - 1], row_max, atol=1e-6).all())
    if fits_zero != fits_one:
        return fits_zero
    # rule 3: a label column written next to y_true
    for column in LABEL_COLUMNS:
        if column in table:
            reference = _column_as_1based(table, column)
            if reference is None:
                continue
            if (reference == y_true).all():
                return False
            if (reference == y_true + 1).all():
                return True
    # rule 4: the earlier project's shape (a) was 0-based, shape (b) 1-based
    return "probs" in table and not all(c in table for c in PROB_COLUMNS)


def _absolute_path(value, run_dir: Path, cwd: Path):
    """Relative -> cwd when the file exists there, else the run directory."""
    if not isinstance(value, str) or not value.strip():
        return None
    path = Path(value.strip()).expanduser()
    if path.is_absolute():
        return str(path)
    return str(cwd / path) if (cwd / path).exists() else str(run_dir / path)


def _read_predictions(run_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    source = run_dir / "val_predictions.csv"
    if not source.is_file():
        raise _missing(source)
    try:
        table = pd.read_csv(source)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise RunError(f"{source} is not a readable CSV ({exc}); retrain the run or repair the file") from None
    if "image_path" not in table and "path" in table:
        table = table.rename(columns={"path": "image_path"})
    lacking = [c for c in ("image_path", "y_true", "y_pred") if c not in table]
    if lacking:
        raise RunError(
            f"{source} lacks columns {', '.join(lacking)} (found: {', '.join(map(str, table.columns))}); "
            f"it should be written by {TRAIN_WRITER}"
        )
    if table.empty:
        raise RunError(f"{source} has no rows: the run has no validation predictions; retrain it")
    probs = _probabilities(table, source)
    y_true = _labels(table, "y_true", source)
    y_pred = _labels(table, "y_pred", source)
    if _is_zero_based(table, y_true, y_pred, probs, source):
        y_true, y_pred = y_true + 1, y_pred + 1
    n_classes = len(PROB_COLUMNS)
    if not ((y_true >= 1) & (y_true <= n_classes) & (y_pred >= 1) & (y_pred <= n_classes)).all():
        raise RunError(f"{source}: y_true/y_pred must be 1..4 (or 0..3)")

    cwd = Path.cwd()
    out = pd.DataFrame({"image_path": [_absolute_path(v, run_dir, cwd) for v in table["image_path"]]})
    if out["image_path"].isna().any():
        raise RunError(f"{source}: image_path is empty on row {int(out['image_path'].isna().idxmax()) + 2}")
    out["y_true"] = y_true
    out["y_pred"] = y_pred
    rows = np.arange(len(table))
    if "confidence" in table:
        out["confidence"] = pd.to_numeric(table["confidence"], errors="coerce").to_numpy(dtype=np.float64)
    else:
        out["confidence"] = probs[rows, y_pred - 1]
    for j, column in enumerate(PROB_COLUMNS):
        out[column] = probs[:, j]
    for column in OPTIONAL_COLUMNS:
        if column in table:
            values = table[column].to_numpy()
            if column in PATH_COLUMNS:  # object dtype keeps None for "no mask" cells
                values = pd.Series([_absolute_path(v, run_dir, cwd) for v in values], dtype=object, index=out.index)
            out[column] = values
    replaced = {"probs", *out.columns}
    for column in table.columns:
        if column not in replaced:
            out[column] = table[column].to_numpy()
    return out, probs


# --------------------------------------------------------------------------- layouts


def _fold_number(path: Path) -> int | None:
    match = _FOLD_RE.match(path.name)
    return int(match.group(1)) if match else None


def _fold_context(run_dir: Path) -> tuple[Path, Path] | None:
    """(cv root, fold dir) when ``run_dir`` is a fold's run directory."""
    if _fold_number(run_dir) is not None:
        return run_dir.parent, run_dir
    if run_dir.name == "results" and _fold_number(run_dir.parent) is not None:
        return run_dir.parent.parent, run_dir.parent
    return None


def _fold_run_dir(fold_dir: Path) -> Path:
    """The earlier layout keeps a fold's run under ``fold_N/results``."""
    return fold_dir / "results" if (fold_dir / "results").is_dir() else fold_dir


def _fold_dirs(root: Path) -> list[Path]:
    folds = [p for p in root.iterdir() if p.is_dir() and _fold_number(p) is not None]
    return sorted(folds, key=_fold_number)


def is_cv_root(path: str | Path) -> bool:
    """True when ``path`` is a cross-validation root (``fold_N`` folders or ``cv_summary.json``)."""
    path = Path(path)
    if not path.is_dir():
        return False
    return (path / "cv_summary.json").is_file() or bool(_fold_dirs(path))


def load_run(path: str | Path) -> Run:
    """Read one run directory (ours or the earlier project's) into a :class:`Run`.

    Parameters
    ----------
    path : str or Path
        The run directory; a cross-validation fold may be given as
        ``.../fold_1`` (its ``results/`` is used) or ``.../fold_1/results``.

    Returns
    -------
    Run

    Raises
    ------
    RunError
        The directory or a required file (checkpoint, summary.json,
        val_predictions.csv, metrics) is missing or malformed; the message
        names the file and what writes it. A cross-validation root is refused
        with a pointer to :func:`load_cv_run`.
    """
    run_dir = Path(path).absolute()
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist (runs are written by {TRAIN_WRITER})")
    if _fold_number(run_dir) is None and is_cv_root(run_dir):
        raise RunError(
            f"{run_dir} is a cross-validation run (fold_N folders); load it with load_cv_run, "
            "or pass one fold such as fold_1"
        )
    if _fold_number(run_dir) is not None:
        run_dir = _fold_run_dir(run_dir)
    context = _fold_context(run_dir)

    checkpoint = _find_checkpoint(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file() and context is not None:
        # a fold without its own summary shares the cross-validation root's
        candidates = [context[1] / "summary.json", context[0] / "summary.json"]
        summary_path = next((p for p in candidates if p.is_file()), summary_path)
    summary = _read_json(summary_path)
    predictions, probabilities = _read_predictions(run_dir)
    metrics_raw = _read_json(_find_metrics(run_dir))

    if context is not None:
        root, fold_dir = context
        run_id, fold, name_paths = f"{root.name}/{fold_dir.name}", _fold_number(fold_dir), [run_dir, fold_dir, root]
    else:
        run_id, fold, name_paths = run_dir.name, None, [run_dir]
    return Run(
        path=run_dir,
        run_id=run_id,
        seed=_seed(summary, name_paths),
        checkpoint=checkpoint,
        predictions=predictions,
        probabilities=probabilities,
        metrics=normalise_metrics(metrics_raw, predictions["y_true"].to_numpy()),
        img_size=_img_size(summary, summary_path),
        mean=_as_triple(summary.get("mean"), IMAGENET_MEAN, "mean", summary_path),
        std=_as_triple(summary.get("std"), IMAGENET_STD, "std", summary_path),
        normalise_laterality=_normalise_laterality(summary),
        summary=summary,
        fold=fold,
        metrics_raw=metrics_raw,
    )


def _declared_k(root: Path, summary: dict) -> int | None:
    """Fold count stated by cv_summary.json or the folder name (``results_k3_...``)."""
    for key in ("k", "n_folds", "folds", "n_splits"):
        value = summary.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    match = _K_RE.search(root.name)
    return int(match.group(1)) if match else None


def load_cv_run(path: str | Path) -> CVRun:
    """Read a cross-validation root and every fold in it.

    Parameters
    ----------
    path : str or Path
        e.g. ``outputs/density_experiments/results_k3_seed42``.

    Returns
    -------
    CVRun

    Raises
    ------
    RunError
        Not a cross-validation root, a fold missing from the numbering
        (``fold_1..k`` or ``fold_0..k-1``, ``k`` from cv_summary.json or the
        folder name), or any fold that :func:`load_run` refuses.
    """
    root = Path(path).absolute()
    if not root.is_dir():
        raise RunError(f"cross-validation directory {root} does not exist (written by {CV_WRITER})")
    folds = _fold_dirs(root)
    if not folds:
        raise RunError(
            f"{root} has no fold_N folders: not a cross-validation run (written by {CV_WRITER} as "
            "results_k{K}_seed{S}/fold_{1..K}/results)"
        )
    summary_path = root / "cv_summary.json"
    summary = _read_json(summary_path) if summary_path.is_file() else {}
    numbers = [_fold_number(f) for f in folds]
    first = 0 if numbers[0] == 0 else 1
    k = _declared_k(root, summary) or len(folds)
    expected = list(range(first, first + max(k, len(folds))))
    gaps = [n for n in expected if n not in numbers]
    if gaps:
        raise _missing(root / f"fold_{gaps[0]}", f"the cross-validation run has folds {numbers} of {k}", CV_WRITER)
    runs = [load_run(_fold_run_dir(f)) for f in folds]
    seed = _seed(summary, [root])
    if seed is None:
        seed = runs[0].seed
    return CVRun(root=root, seed=seed, k=len(runs), folds=runs, summary=summary)


# --------------------------------------------------------------------------- resolving specs


def _natural_key(path: Path) -> list:
    """results_2 before results_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def resolve_runs(specs, outputs_root: str | Path = Path("outputs")) -> list[Path]:
    """Turn ``--run`` arguments into run (or cross-validation) directories.

    Parameters
    ----------
    specs : str, Path or iterable of them
        Each is an existing directory; or a name relative to the outputs
        folders (``results_4`` -> ``outputs/mammo_efficientnetb0_density/results_4``,
        also ``outputs/density_experiments/...`` and ``outputs/...``); or a
        glob pattern, matched first from the current directory, then inside
        the first of those folders where it matches. Only directories match.
    outputs_root : str or Path
        The outputs folder (default ``outputs``).

    Returns
    -------
    list[Path]
        Absolute directories, in the order given (globs sorted naturally),
        without duplicates. Whether each holds a readable run is checked by
        :func:`load_run` / :func:`load_cv_run`.

    Raises
    ------
    RunError
        A spec that matches nothing; the message lists where it looked.
    """
    if isinstance(specs, (str, Path)):
        specs = [specs]
    outputs_root = Path(outputs_root)
    bases = [outputs_root / sub for sub in DEFAULT_RUN_FOLDERS] + [outputs_root]
    found: list[Path] = []
    for spec in specs:
        text = str(spec)
        if _has_glob(text):
            matches = [Path(m) for m in glob.glob(text)]
            matches = [m for m in matches if m.is_dir()]
            # otherwise the first outputs folder where the pattern matches wins,
            # so "results_*" means the default training folder's runs
            for base in [] if matches or Path(text).is_absolute() else bases:
                matches = [m for m in map(Path, glob.glob(str(base / text))) if m.is_dir()]
                if matches:
                    break
            matches = sorted(matches, key=_natural_key)
            looked = [text] + [str(base / text) for base in bases]
        else:
            candidates = [Path(text)] + ([] if Path(text).is_absolute() else [base / text for base in bases])
            matches = next(([c] for c in candidates if c.is_dir()), [])
            looked = [str(c) for c in candidates]
        if not matches:
            from mammography.suggest import run_not_found_message

            raise RunError(run_not_found_message(text, [Path(p) for p in looked], bases, TRAIN_WRITER))
        for match in matches:
            match = match.absolute()
            if match not in found:
                found.append(match)
    return found

