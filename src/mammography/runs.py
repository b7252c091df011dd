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
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from mammography.csvfiles import unescape_table
from mammography.data.labels import CLASS_LETTERS, parse_label
from mammography.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from mammography.errors import ConfigError, ImageReadError, RunError, printable
from mammography.io.files import MAX_CSV_BYTES, read_json_file, require_regular_file
from mammography.limits import check_img_size, check_normalisation
from mammography.models.checkpoint import checkpoint_sha256, load_density_checkpoint
from mammography.training.metrics import SCALAR_METRICS

__all__ = [
    "CVRun",
    "DEFAULT_PROB_TOLERANCE",
    "DEFAULT_RUN_FOLDERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PIPELINES_WRITER",
    "OUR_WRITER",
    "PredictionCheck",
    "Run",
    "StoredPredictions",
    "as_run",
    "expand_folds",
    "is_cv_root",
    "load_cv_run",
    "load_run",
    "metrics_differ",
    "normalise_metrics",
    "open_runs",
    "resolve_runs",
]

#: who wrote a run: this project, or the earlier mammography-pipelines project
OUR_WRITER = "mammography"
PIPELINES_WRITER = "mammography-pipelines"
#: largest probability difference still counted as the same prediction: a
#: near tie may flip under another precision (bf16 on a GPU) without the
#: checkpoint or the input having changed
DEFAULT_PROB_TOLERANCE = 0.05
#: how many disagreeing image paths a message names
SHOW_DISAGREEING = 5
#: sub-folders of the outputs root where runs are written by default
#: (train-density, cross-validate)
DEFAULT_RUN_FOLDERS = ("mammo_efficientnetb0_density", "density_experiments")
#: probability column of class k (1..4) at index k - 1
PROB_COLUMNS = tuple(f"p_{letter}" for letter in CLASS_LETTERS)
CHECKPOINT_NAMES = ("best_model.pth", "best_model.pt")
#: metric files, ours first; the newer CV variant writes metrics.json at the root
METRICS_FILES = ("metrics/val_metrics.json", "metrics.json", "val_metrics.json")
PIPELINES_BEST_METRICS = "metrics/best_metrics.json"
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
#: longest text a probs cell may hold (four numbers written by numpy or JSON take under 200)
_MAX_PROBS_TEXT = 1000
_SEED_RE = re.compile(r"seed[_-]?(\d+)", re.IGNORECASE)
_K_RE = re.compile(r"(?:^|_)k(\d+)(?:_|$)")


@dataclass(frozen=True)
class StoredPredictions:
    """A prediction set the run wrote itself, aligned with ``Run.predictions``.

    Attributes
    ----------
    source : where it was read, e.g. ``"val_predictions.csv"`` or
        ``"metrics/best_metrics.json (val_rows)"``.
    y_pred : (N,) int 1..4.
    probs : (N, 4) float64.
    epoch : the training epoch it was written at, when the run says so.
    """

    source: str
    y_pred: np.ndarray
    probs: np.ndarray
    epoch: int | None = None


@dataclass(frozen=True)
class PredictionCheck:
    """Predictions recomputed from the checkpoint compared with the run's stored ones.

    The one rule every command uses to decide that an image's two predictions
    *differ* (:meth:`Run.check_predictions`): any class probability differs
    by more than ``tolerance``, or the stored prediction is beaten by more
    than ``tolerance`` (a near tie flipping under another precision is not a
    difference).

    Attributes
    ----------
    run_id : the run.
    n_images : validation images compared.
    differs : (N,) bool, per image in ``Run.predictions`` order.
    disagreeing : image paths that differ, in order.
    max_prob_diff : largest absolute probability difference.
    source : the stored prediction set compared against.
    note : why the two sets may legitimately differ (e.g. they come from
        different epochs), or "".
    tolerance : the probability tolerance used.
    """

    run_id: str
    n_images: int
    differs: np.ndarray
    disagreeing: tuple[str, ...]
    max_prob_diff: float
    source: str = "val_predictions.csv"
    note: str = ""
    tolerance: float = DEFAULT_PROB_TOLERANCE

    @property
    def n_disagree(self) -> int:
        return len(self.disagreeing)

    def message(self) -> str:
        """One line, e.g. ``"seed42/results: 3 of 120 validation images disagree with ..."``."""
        note = f" ({self.note})" if self.note else ""
        if not self.disagreeing:
            return (f"{self.run_id}: all {self.n_images} predictions recomputed from the checkpoint agree with "
                    f"{self.source}{note}")
        shown = ", ".join(self.disagreeing[:SHOW_DISAGREEING])
        more = f" and {self.n_disagree - SHOW_DISAGREEING} more" if self.n_disagree > SHOW_DISAGREEING else ""
        cause = note or " (the checkpoint, or the images, changed after the run wrote them)"
        return (f"{self.run_id}: {self.n_disagree} of {self.n_images} validation images disagree with "
                f"{self.source}: the predictions recomputed from the checkpoint differ{cause}, max probability "
                f"difference {self.max_prob_diff:.3f}: {shown}{more}")


def metrics_differ(recomputed: dict, stored: dict, digits: int = 3) -> bool:
    """True when a scalar metric read with ``digits`` decimals differs between two
    metric sets (a missing or non-finite value differs from any number)."""

    def shown(value):
        return None if value is None or not math.isfinite(float(value)) else round(float(value), digits) + 0.0

    return any(shown(recomputed.get(k)) != shown(stored.get(k)) for k in SCALAR_METRICS)


@dataclass(eq=False)
class Run:
    """One trained run directory, normalised.

    Attributes
    ----------
    path : Path
        The run directory (absolute).
    run_id : str
        Directory name; ``"<parent>/results"`` for a folder named ``results``
        (the earlier project always used that name, so the parent tells
        seeds apart); ``"<cv root>/fold_<n>"`` for a cross-validation fold.
    seed : int or None
        Training seed (summary.json, else the folder name).
    checkpoint : Path
        ``best_model.pth`` (or the earlier project's ``best_model.pt``).
    predictions : pandas.DataFrame
        ``image_path`` (absolute), ``y_true``/``y_pred`` (1..4), ``confidence``,
        ``p_A..p_D``, then optional and extra columns (module docstring), as
        stored in ``val_predictions.csv``.
    probabilities : numpy.ndarray
        (N, 4) float64, row ``i`` = ``p_A..p_D`` of prediction ``i``.
    metrics : dict
        ``acc, kappa_quadratic, macro_f1, auc_ovr, bal_acc, bal_acc_adj`` ->
        float or None, of the checkpoint's epoch where the run says which
        file holds them (``metrics_source``).
    preprocessing : Preprocessing
        How an image becomes this model's input (the one record every
        command uses; see :mod:`mammography.data.preprocess`).
    summary : dict
        summary.json as read.
    fold : int or None
        Fold number as in the folder name, for cross-validation folds.
    metrics_raw : dict
        The metrics file as read (confusion matrix, report ...).
    writer : str
        :data:`OUR_WRITER` or :data:`PIPELINES_WRITER`.
    stored : StoredPredictions or None
        The stored predictions recomputed ones are compared with: those of
        the checkpoint's own epoch when the run kept them, else
        ``val_predictions.csv``; None when the run kept none (a fold whose
        validation images were rebuilt).
    checkpoint_epoch : int or None
        The epoch the checkpoint's weights come from, when known.
    metrics_source : str
        The file ``metrics`` was read from (relative to the run).
    notes : list of str
        Things found while reading that the user should know (one line each).
    missing_images : dict
        Stored image path -> every location tried, for images not found.
    """

    path: Path
    run_id: str
    seed: int | None
    checkpoint: Path
    predictions: pd.DataFrame
    probabilities: np.ndarray
    metrics: dict
    preprocessing: Preprocessing
    summary: dict
    fold: int | None = None
    metrics_raw: dict = field(default_factory=dict)
    writer: str = OUR_WRITER
    stored: StoredPredictions | None = None
    checkpoint_epoch: int | None = None
    metrics_source: str = ""
    notes: list = field(default_factory=list)
    missing_images: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.stored is None and "y_pred" in self.predictions:
            y_pred = self.predictions["y_pred"].to_numpy(dtype=int)
            self.stored = StoredPredictions("val_predictions.csv", y_pred, np.asarray(self.probabilities, np.float64))

    # the model input is the preprocessing record's; these read it
    @property
    def img_size(self) -> int:
        return self.preprocessing.img_size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.preprocessing.std

    @property
    def normalise_laterality(self) -> bool:
        return self.preprocessing.normalise_laterality

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

    def dataset(self, cache_dir=None, rows=None):
        """The validation images as this run's model input (the run's preprocessing).

        Parameters
        ----------
        cache_dir : decoded-image cache folder, or None (decode every time).
        rows : row positions of ``predictions`` to include (default: all).

        Returns
        -------
        mammography.data.dataset.MammogramDataset
        """
        from mammography.data.dataset import MammogramDataset, laterality_hints

        table = self.predictions if rows is None else self.predictions.iloc[list(rows)]
        labels = table["y_true"].astype(int).tolist()
        return MammogramDataset(table["image_path"].astype(str).tolist(), labels, cache_dir=cache_dir,
                                preprocessing=self.preprocessing, laterality_hints=laterality_hints(table))

    def require_images(self) -> None:
        """Raise :class:`ImageReadError` naming every place tried when an image is missing."""
        if not self.missing_images:
            return
        stored, tried = next(iter(self.missing_images.items()))
        more = len(self.missing_images) - 1
        others = f" ({more} more image{'s' if more != 1 else ''} missing)" if more else ""
        raise ImageReadError(
            f"{self.run_id}: validation image {stored} not found; tried {', '.join(tried)}{others}. "
            "Run the command from the folder the run was trained in, or move the images back"
        )

    def check_predictions(self, probs: np.ndarray, tolerance: float = DEFAULT_PROB_TOLERANCE,
                          rows=None) -> PredictionCheck:
        """Compare probabilities recomputed from the checkpoint with the stored ones.

        Parameters
        ----------
        probs : (N, 4) recomputed probabilities, in ``predictions`` order
            (or in the order of ``rows``).
        tolerance : largest probability difference still counted as agreement.
        rows : positions in ``predictions`` that ``probs`` belong to (default: all).

        Returns
        -------
        PredictionCheck (its ``differs`` is the per-image verdict every
        command shows).
        """
        rows = np.arange(len(self.predictions)) if rows is None else np.asarray(rows, dtype=int)
        probs = np.asarray(probs, dtype=np.float64)
        paths = self.predictions["image_path"].astype(str).to_numpy()[rows].tolist()
        if self.stored is None:  # e.g. a rebuilt cross-validation fold: nothing to compare with
            return PredictionCheck(self.run_id, len(paths), np.zeros(len(paths), bool), (), 0.0,
                                   "no stored predictions", "", tolerance)
        stored = replace(self.stored, y_pred=self.stored.y_pred[rows], probs=self.stored.probs[rows])
        if probs.shape != stored.probs.shape:
            raise RunError(f"{self.run_id}: {probs.shape[0]} recomputed predictions for {len(paths)} stored ones")
        if not len(paths):
            return PredictionCheck(self.run_id, 0, np.zeros(0, bool), (), 0.0, stored.source, self._epoch_note(),
                                   tolerance)
        diff = np.abs(stored.probs - probs).max(axis=1)
        rows = np.arange(len(paths))
        y_pred = probs.argmax(axis=1) + 1
        beaten = probs[rows, y_pred - 1] - probs[rows, stored.y_pred - 1]
        differs = (diff > tolerance) | ((stored.y_pred != y_pred) & (beaten > tolerance))
        return PredictionCheck(
            run_id=self.run_id,
            n_images=len(paths),
            differs=differs,
            disagreeing=tuple(p for p, d in zip(paths, differs) if d),
            max_prob_diff=float(diff.max()),
            source=stored.source,
            note=self._epoch_note(),
            tolerance=tolerance,
        )

    def _epoch_note(self) -> str:
        if self.stored is None:
            return ""
        epoch, ckpt = self.stored.epoch, self.checkpoint_epoch
        if epoch is not None and ckpt is not None and epoch != ckpt:
            return f"{self.stored.source} is from epoch {epoch}, the checkpoint from epoch {ckpt}"
        return ""


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
        The folds that can be explained (weights and validation images
        known), in fold order; ``Run.fold`` keeps the folder's number (from
        1, or from 0 in the earlier project's layout).
    summary : dict
        cv_summary.json as read (``{}`` when the variant has none).
    records : list[FoldRecord]
        Every fold, with the metrics its files state, whether it has a
        :class:`Run` and, when not, why.
    writer : str
        :data:`OUR_WRITER` or :data:`PIPELINES_WRITER`.
    notes : list of str
        What the user should know about the files (one line each).
    """

    root: Path
    seed: int | None
    k: int
    folds: list[Run]
    summary: dict
    records: list = field(default_factory=list)
    writer: str = OUR_WRITER
    notes: list = field(default_factory=list)

    def __post_init__(self):
        if not self.records:
            self.records = [FoldRecord(run.fold if run.fold is not None else i + 1, dict(run.metrics), run)
                            for i, run in enumerate(self.folds)]


@dataclass(eq=False)
class FoldRecord:
    """One fold of a cross-validation run, as its files have it.

    Attributes
    ----------
    number : the folder's fold number.
    metrics : the six scalar metrics the files state (None where absent or
        known to be wrong).
    run : the fold as a :class:`Run` when its weights and validation images
        are known, else None.
    missing : why there is no ``run`` (one line), or "".
    metrics_note : why some stated metrics are left out, or "".
    """

    number: int
    metrics: dict
    run: Run | None = None
    missing: str = ""
    metrics_note: str = ""


# --------------------------------------------------------------------------- files


def _missing(path: Path, what: str = "a run directory needs it", writer: str = TRAIN_WRITER) -> RunError:
    return RunError(f"{path} is missing: {what} (written by {writer})")


def _read_json(path: Path) -> dict:
    if not path.exists() and not path.is_symlink():
        raise _missing(path)
    data = read_json_file(path, "run file", RunError, hint="rewrite it or retrain the run")
    if not isinstance(data, dict):
        raise RunError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


def _find_checkpoint(run_dir: Path) -> Path:
    for name in CHECKPOINT_NAMES:
        if (run_dir / name).exists():
            require_regular_file(run_dir / name, "checkpoint", RunError)  # a FIFO would hang the hash
            return run_dir / name
    raise _missing(
        run_dir / CHECKPOINT_NAMES[0],
        f"a run directory needs its weights (also looked for {CHECKPOINT_NAMES[1]})",
    )


def _find_metrics(run_dir: Path, writer: str = OUR_WRITER) -> Path:
    # the earlier project's best_metrics.json is the checkpoint's epoch; its
    # val_metrics.json the last epoch's
    names = (PIPELINES_BEST_METRICS, *METRICS_FILES) if writer == PIPELINES_WRITER else METRICS_FILES
    for name in names:
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
    return check_normalisation(values, f"{printable(source)}: {key}", positive=(key == "std"), error=RunError)


def _img_size(summary: dict, source: Path) -> int:
    value = summary.get("img_size", summary.get("image_size"))
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or int(value) != value or value <= 0:
        raise RunError(
            f"{source} has no usable img_size (found {value!r}); the model's input size must be recorded "
            f"there (as {TRAIN_WRITER} does)"
        )
    return check_img_size(value, f"{printable(source)}: img_size", RunError)


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
    if len(text) > _MAX_PROBS_TEXT:  # four numbers; anything longer is not a probability list
        raise RunError(f"{source}: row {row + 2} probs is {len(text)} characters long, not a list of 4 probabilities")
    try:
        values = json.loads(text)
    except RecursionError:
        raise RunError(f"{source}: row {row + 2} probs is nested, not a list of numbers") from None
    except json.JSONDecodeError:
        try:
            values = ast.literal_eval(text)  # literals only: tuples, 'nan'-free python lists
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
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


def _path_bases(run_dir: Path, summary: dict) -> list[Path]:
    """Where relative image paths are looked up, in order: the run directory,
    the working directory, then the folder the run was trained from
    (summary.json ``reproducibility.cwd``, or ``cwd``)."""
    bases = [run_dir, Path.cwd()]
    rep = summary.get("reproducibility")
    trained_in = rep.get("cwd") if isinstance(rep, dict) else summary.get("cwd")
    if isinstance(trained_in, str) and trained_in.strip():
        bases.append(Path(trained_in).expanduser())
    unique: list[Path] = []
    for base in bases:
        if base not in unique:
            unique.append(base)
    return unique


def _absolute_path(value, bases: list[Path], missing: dict | None = None):
    """A stored path made absolute: kept when absolute, else the first base
    where the file exists; when none has it, the first base's (and every
    place tried goes into ``missing``)."""
    if not isinstance(value, str) or not value.strip():
        return None
    if "\x00" in value:  # no file name holds one; os calls would raise ValueError
        raise RunError(f"{bases[0] / 'val_predictions.csv'}: a path contains a NUL byte ({printable(value)})")
    path = Path(value.strip()).expanduser()
    candidates = [path] if path.is_absolute() else [base / path for base in bases]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    if missing is not None:
        missing[value.strip()] = [str(c) for c in candidates]
    return str(candidates[0])


def _read_predictions(run_dir: Path, bases: list[Path], missing: dict) -> tuple[pd.DataFrame, np.ndarray]:
    source = run_dir / "val_predictions.csv"
    if not source.exists():
        raise _missing(source)
    st = require_regular_file(source, "predictions", RunError)
    if st.st_size > MAX_CSV_BYTES:
        raise RunError(f"{source} is {st.st_size / 1e6:.0f} MB, more than any validation set's predictions; "
                       "check the file")
    try:
        table = unescape_table(pd.read_csv(source))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise RunError(f"{source} is not a readable CSV ({printable(exc)}); retrain the run or repair the file") from None
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

    out = pd.DataFrame({"image_path": [_absolute_path(v, bases, missing) for v in table["image_path"]]})
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
                values = pd.Series([_absolute_path(v, bases) for v in values], dtype=object, index=out.index)
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
        ``.../fold_1`` (its ``results/`` is used) or ``.../fold_1/results``,
        and an earlier-project training's ``--outdir`` (its ``results/``).

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
    elif _is_outdir(run_dir):
        # the earlier project's --outdir: its run is always written to <outdir>/results
        run_dir = run_dir / "results"
    context = _fold_context(run_dir)

    checkpoint = _find_checkpoint(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file() and context is not None:
        # a fold without its own summary shares the cross-validation root's
        candidates = [context[1] / "summary.json", context[0] / "summary.json"]
        summary_path = next((p for p in candidates if p.is_file()), summary_path)
    summary = _read_json(summary_path)
    writer = _writer(summary)
    missing: dict[str, list[str]] = {}
    predictions, probabilities = _read_predictions(run_dir, _path_bases(run_dir, summary), missing)
    metrics_path = _find_metrics(run_dir, writer)
    metrics_raw = _read_json(metrics_path)

    if context is not None:
        root, fold_dir = context
        run_id, fold, name_paths = f"{root.name}/{fold_dir.name}", _fold_number(fold_dir), [run_dir, fold_dir, root]
    else:
        run_id, fold, name_paths = _run_id(run_dir), None, [run_dir, run_dir.parent]
    run = Run(
        path=run_dir,
        run_id=run_id,
        seed=_seed(summary, name_paths),
        checkpoint=checkpoint,
        predictions=predictions,
        probabilities=probabilities,
        metrics=normalise_metrics(metrics_raw, predictions["y_true"].to_numpy()),
        preprocessing=_preprocessing(summary, summary_path, writer, run_dir, predictions["image_path"]),
        summary=summary,
        fold=fold,
        metrics_raw=metrics_raw,
        writer=writer,
        metrics_source=metrics_path.relative_to(run_dir).as_posix(),
        missing_images=missing,
    )
    _attach_epochs(run)
    if writer == PIPELINES_WRITER:
        run.notes.extend(_resume_notes(run))
    return run


def _is_outdir(folder: Path) -> bool:
    """A training --outdir rather than a run: no weights of its own, a run in ``results/``."""
    return (not any((folder / name).is_file() for name in CHECKPOINT_NAMES)
            and any((folder / "results" / name).is_file() for name in CHECKPOINT_NAMES))


def _run_id(run_dir: Path) -> str:
    """The folder name; ``<parent>/results`` for the name every earlier-project run has."""
    if run_dir.name == "results" and run_dir.parent != run_dir:
        return f"{run_dir.parent.name}/results"
    return run_dir.name


def _writer(summary: dict) -> str:
    """This project records its preprocessing in summary.json; the earlier project never did."""
    return OUR_WRITER if isinstance(summary.get("preprocess"), dict) else PIPELINES_WRITER


def _preprocessing(summary: dict, source: Path, writer: str, run_dir: Path, image_paths=()) -> Preprocessing:
    """The run's one preprocessing record (see :mod:`mammography.data.preprocess`)."""
    from mammography.io.pipelines import memory_cache_used

    img_size = _img_size(summary, source)
    mean = _as_triple(summary.get("mean"), IMAGENET_MEAN, "mean", source)
    std = _as_triple(summary.get("std"), IMAGENET_STD, "std", source)
    try:
        if writer == OUR_WRITER:
            return Preprocessing.from_record(summary["preprocess"], img_size=img_size, mean=mean, std=std,
                                             source=f"{source} (preprocess)")
        evidence = ["summary.json has no preprocess record"]
        if isinstance(summary.get("reproducibility"), dict):
            evidence.append("has a reproducibility block")
        if (run_dir / "best_model.pt").is_file():
            evidence.append("best_model.pt")
        thumbnail = memory_cache_used(summary.get("cache_mode"), image_paths)
        if thumbnail:
            evidence.append(f"cache_mode {summary.get('cache_mode')!r} shrank images to thumbnails first")
        return Preprocessing.pipelines_crop(
            img_size, mean, std, thumbnail=thumbnail,
            source="earlier mammography-pipelines run (" + ", ".join(evidence) + ")")
    except ConfigError as exc:
        raise RunError(f"{source}: {exc}") from None


def _int_value(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if int(value) == value else None


def _history_last_epoch(run_dir: Path) -> int | None:
    """The last epoch listed in train_history.csv, if the run has one."""
    path = run_dir / "train_history.csv"
    if not path.is_file():
        return None
    try:
        epochs = pd.to_numeric(pd.read_csv(path, usecols=["epoch"])["epoch"], errors="coerce").dropna()
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    return int(epochs.max()) if len(epochs) else None


def _attach_epochs(run: Run) -> None:
    """Which epochs the checkpoint and the stored predictions come from.

    This project writes the checkpoint, val_predictions.csv and the metrics
    of one saved epoch together. The earlier project rewrote
    val_predictions.csv (and metrics/val_metrics.json) after every epoch
    while best_model.pt keeps the best epoch: there the CSV is the last
    epoch's, and the best epoch's metrics (metrics/best_metrics.json) belong
    to the checkpoint.
    """
    summary = run.summary
    if run.writer == OUR_WRITER:
        run.checkpoint_epoch = _int_value(summary.get("saved_epoch", summary.get("best_epoch")))
        run.stored = replace(run.stored, epoch=run.checkpoint_epoch)
        return
    run.checkpoint_epoch = _int_value(summary.get("best_epoch"))
    last = _history_last_epoch(run.path)
    csv = replace(run.stored, epoch=last)
    best = _val_rows(run) if run.metrics_source == PIPELINES_BEST_METRICS else None
    run.stored = best if best is not None else csv
    if last is not None and run.checkpoint_epoch is not None and last != run.checkpoint_epoch:
        compared = (f"predictions are compared with {best.source}, the checkpoint's epoch" if best is not None
                    else "no stored prediction of the checkpoint's epoch exists, so differences are expected")
        run.notes.append(f"{run.run_id}: val_predictions.csv is from epoch {last}, the checkpoint from epoch "
                         f"{run.checkpoint_epoch} (the earlier project rewrote the CSV after every epoch); "
                         f"{compared}; metrics are read from {run.metrics_source}")


def _split_paths(run: Run) -> set[str] | None:
    """Absolute image paths of the earlier project's splits/val.csv, or None without one."""
    path = run.path / "splits" / "val.csv"
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    column = next((c for c in ("image_path", "path") if c in table), None)
    if column is None:
        return None
    bases = _path_bases(run.path, run.summary)
    return {p for p in (_absolute_path(v, bases) for v in table[column]) if p}


def _resume_notes(run: Run) -> list[str]:
    """What an automatic resume of the earlier project left inconsistent.

    A resumed training rewrites summary.json (seed, resume_epoch, ...) and
    redraws splits/val.csv with the new seed, while the weights, the
    predictions and train_history.csv stay those of the training that ran.
    """
    summary, notes = run.summary, []
    resumed = summary.get("resume_from")
    resume_epoch = _int_value(summary.get("resume_epoch"))
    last = _history_last_epoch(run.path)
    where = f" (resume_from {resumed})" if isinstance(resumed, str) and resumed else ""
    if resumed and resume_epoch is not None and last is not None and resume_epoch > last:
        notes.append(f"{run.run_id}: summary.json was rewritten by a resumed run{where}: its resume_epoch "
                     f"{resume_epoch} comes after the last trained epoch {last}, so that resume trained nothing and "
                     "its settings (seed, ...) do not describe the weights")
    split = _split_paths(run)
    images = set(run.predictions["image_path"].astype(str))
    if split is not None and split != images:
        shared = len(split & images)
        seed = f" seed {run.seed}" if run.seed is not None else ""
        notes.append(f"{run.run_id}: splits/val.csv (drawn with summary.json's{seed}) shares {shared} of "
                     f"{len(images)} images with val_predictions.csv, so summary.json's seed is not the one the "
                     f"checkpoint was trained with{where}; the images of val_predictions.csv are used")
    return notes


def _val_rows(run: Run) -> StoredPredictions | None:
    """The checkpoint epoch's predictions kept in the earlier project's best_metrics.json.

    ``val_rows`` is a list of ``{path, y_true, y_pred, p_class_0..p_class_3,
    ...}`` with 1-based classes. Used only when it lists exactly the images
    of val_predictions.csv (matched by path), else None.
    """
    rows = run.metrics_raw.get("val_rows")
    if not isinstance(rows, list) or len(rows) != len(run.predictions):
        return None
    bases = _path_bases(run.path, run.summary)
    position = {p: i for i, p in enumerate(run.predictions["image_path"].astype(str))}
    y_pred = np.zeros(len(rows), dtype=int)
    probs = np.full((len(rows), len(PROB_COLUMNS)), np.nan)
    for row in rows:
        if not isinstance(row, dict):
            return None
        i = position.get(_absolute_path(row.get("path"), bases) or "")
        values = [_finite(row.get(f"p_class_{k}")) for k in range(len(PROB_COLUMNS))]
        pred = _int_value(row.get("y_pred"))
        if i is None or None in values or pred is None or not 1 <= pred <= len(PROB_COLUMNS):
            return None
        y_pred[i], probs[i] = pred, values
    if np.isnan(probs).any():  # a path listed twice, another missing
        return None
    epoch = _int_value(run.summary.get("best_epoch"))
    return StoredPredictions(f"{PIPELINES_BEST_METRICS} (val_rows)", y_pred, probs, epoch)


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
    if not any((_fold_run_dir(f) / "val_predictions.csv").is_file() for f in folds):
        from mammography.pipelines_cv import load_pipelines_cv

        return load_pipelines_cv(root, folds, summary)
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



def as_run(run) -> Run:
    """``run`` itself when it is a :class:`Run`, else :func:`load_run` of it (a path)."""
    return run if isinstance(run, Run) else load_run(run)


def open_runs(specs, outputs_root: str | Path = Path("outputs"), *, cv_only: bool = False) -> list[Run | CVRun]:
    """The runs named by ``--run`` arguments: a :class:`Run` per run directory, a
    :class:`CVRun` per cross-validation root, in the order given.

    The one place run specs are expanded; :func:`expand_folds` turns the
    result into the runs to explain.

    Parameters
    ----------
    specs : paths, names under ``outputs_root`` or globs (see
        :func:`resolve_runs`), and :class:`Run` / :class:`CVRun` objects, which
        are kept as they are.
    outputs_root : where relative names are looked up.
    cv_only : every directory must be a cross-validation root (``--cv-run``).

    What the files made worth knowing (:attr:`Run.notes`, :attr:`CVRun.notes`,
    the folds' notes) is logged as warnings, once per run.
    """
    import logging

    specs = [specs] if isinstance(specs, (str, Path, Run, CVRun)) else list(specs)
    out: list[Run | CVRun] = []
    seen: set[Path] = set()
    for spec in specs:
        if isinstance(spec, (Run, CVRun)):
            out.append(spec)
            continue
        for path in resolve_runs([spec], outputs_root=outputs_root):
            if path not in seen:
                seen.add(path)
                out.append(load_cv_run(path) if cv_only or is_cv_root(path) else load_run(path))
    log = logging.getLogger(__name__)
    for item in out:
        folds = item.folds if isinstance(item, CVRun) else []
        for note in [*item.notes, *(n for fold in folds for n in fold.notes)]:
            log.warning("%s", note)
    return out


def expand_folds(items) -> list[Run]:
    """Runs of :func:`open_runs`' result with every cross-validation root replaced by its folds."""
    return [run for item in items for run in (item.folds if isinstance(item, CVRun) else [item])]
