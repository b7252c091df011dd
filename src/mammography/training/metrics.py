"""Validation metrics of a density classifier, computed with scikit-learn.

All functions take *1-based* BI-RADS labels (1..4 = A..D), as written in
``val_predictions.csv``, and a probability matrix whose column ``j`` is the
probability of label ``j + 1``.

Classes that are absent from a small validation set (the phantom mix is
10/40/40/10, so class A or D can be missing from a fold) never make a metric
crash:

* ``auc_ovr`` is the macro average of the one-vs-rest ROC AUCs of the classes
  *present* in ``y_true`` (an absent class has no positives, so its AUC is
  undefined); it is ``None`` when fewer than two classes are present.
* ``kappa_quadratic`` is ``None`` when it is undefined (all labels and
  predictions in one class).
* ``macro_f1`` averages over the labels present in ``y_true`` or ``y_pred``
  (scikit-learn's default), a class with no support and no prediction is
  left out rather than counted as 0 or 1.
* ``bal_acc`` / ``bal_acc_adj`` average recall over the classes present in
  ``y_true`` (scikit-learn's definition); ``bal_acc_adj`` rescales it so that
  chance is 0 and perfect is 1 (``adjusted=True``).

``confusion_matrix`` and ``classification_report`` always cover all four
classes so tables from different runs line up.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

__all__ = ["COLLAPSE_STD", "LABELS", "SCALAR_METRICS", "METRIC_RANGES", "compute_metrics", "auc_ovr_present",
           "degenerate_warnings", "prediction_collapse"]

#: a model whose validation probabilities vary less than this across images (largest per-class standard
#: deviation) gives every image the same output: its heatmaps carry no information about the images
COLLAPSE_STD = 1e-3

#: the 1-based density labels, in probability-column order
LABELS: tuple[int, ...] = (1, 2, 3, 4)
#: scalar metric keys, in the order tables show them
SCALAR_METRICS: tuple[str, ...] = ("acc", "kappa_quadratic", "macro_f1", "auc_ovr", "bal_acc", "bal_acc_adj")
#: the values each scalar metric can take (confidence intervals are clipped to them); the chance-adjusted
#: balanced accuracy reaches -1/(k-1) for k classes present, so -1 with two
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "acc": (0.0, 1.0),
    "kappa_quadratic": (-1.0, 1.0),
    "macro_f1": (0.0, 1.0),
    "auc_ovr": (0.0, 1.0),
    "bal_acc": (0.0, 1.0),
    "bal_acc_adj": (-1.0, 1.0),
}


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _to_builtin(value):
    """numpy scalars inside nested dicts -> plain Python numbers (JSON-ready)."""
    if isinstance(value, dict):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return _finite_or_none(value)
    return value


def auc_ovr_present(y_true: np.ndarray, probs: np.ndarray, labels=LABELS) -> float | None:
    """Macro one-vs-rest ROC AUC over the classes present in ``y_true``.

    Parameters
    ----------
    y_true : (N,) int labels drawn from ``labels``.
    probs : (N, len(labels)) probabilities; column ``j`` belongs to ``labels[j]``.
    labels : the label of each probability column.

    Returns
    -------
    The mean AUC of "class c vs the rest" for every class c present in
    ``y_true``; ``None`` when fewer than two classes are present (no negatives
    or no positives for every class).
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    aucs = []
    for column, label in enumerate(labels):
        positives = y_true == label
        if positives.all() or not positives.any():
            continue
        aucs.append(roc_auc_score(positives.astype(int), probs[:, column]))
    # with two or more classes present every present class has positives and
    # negatives; with one class present there is nothing to rank
    return float(np.mean(aucs)) if aucs else None


def compute_metrics(y_true, y_pred, probs, labels=LABELS) -> dict:
    """All validation metrics of one set of predictions.

    Parameters
    ----------
    y_true, y_pred : (N,) int, 1-based labels (values from ``labels``).
    probs : (N, 4) class probabilities, columns in ``labels`` order.
    labels : the class labels (default 1..4).

    Returns
    -------
    dict with ``acc``, ``kappa_quadratic``, ``macro_f1``, ``auc_ovr``,
    ``bal_acc``, ``bal_acc_adj`` (float or ``None`` when undefined),
    ``confusion_matrix`` (list of lists, rows = true, columns = predicted, in
    ``labels`` order), ``classification_report`` (scikit-learn's dict, keyed
    by the label as a string) and ``n`` (number of images).
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    labels = [int(v) for v in labels]
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"y_true and y_pred must be equal-length non-empty 1-D arrays, got {y_true.shape}, {y_pred.shape}")
    with warnings.catch_warnings():
        # absent classes: sklearn warns, we document the behaviour instead
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        metrics = {
            "acc": float(accuracy_score(y_true, y_pred)),
            "kappa_quadratic": _finite_or_none(cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=labels)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "auc_ovr": auc_ovr_present(y_true, probs, labels),
            "bal_acc": _finite_or_none(balanced_accuracy_score(y_true, y_pred)),
            "bal_acc_adj": _finite_or_none(balanced_accuracy_score(y_true, y_pred, adjusted=True)),
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
            "classification_report": _to_builtin(classification_report(
                y_true,
                y_pred,
                labels=labels,
                target_names=[str(v) for v in labels],
                output_dict=True,
                zero_division=0,
            )),
            "n": int(len(y_true)),
        }
    return metrics


def prediction_collapse(probs, threshold: float = COLLAPSE_STD) -> str | None:
    """One line warning that the model's output does not depend on the image, or None.

    A model trained on a small data set without pretrained weights can
    collapse to one output: every validation image gets the same
    probabilities (to 1e-8), and its Grad-CAM maps are the same for every
    image. Measured as the largest per-class standard deviation of the
    probabilities over the images.

    Parameters
    ----------
    probs : (N, K) probabilities of N images (N >= 2 for a verdict).
    threshold : collapse below this standard deviation (default :data:`COLLAPSE_STD`).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 2:
        return None
    spread = float(np.nanmax(p.std(axis=0))) if p.size else math.nan
    if not (math.isfinite(spread) and spread < threshold):
        return None
    return (
        f"the model's output does not depend on the image: over {p.shape[0]} validation images the largest "
        f"per-class standard deviation of its probabilities is {spread:.1e} (below {threshold:g}), so it predicts the "
        "same for every image and its heatmaps carry no information"
    )


def degenerate_warnings(y_true, y_pred, what: str = "the model") -> list[str]:
    """Why a set of predictions says little, as sentences (empty when nothing is wrong).

    * every image predicted as one class: the model ignores the image, and
      its accuracy is just that class's share of the images;
    * every image of one true class: kappa, AUC and balanced accuracy are
      undefined or meaningless.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    out = []
    if len(y_pred) and len(np.unique(y_pred)) == 1:
        k = int(y_pred[0])
        share = float(np.mean(y_true == k)) if len(y_true) == len(y_pred) else math.nan
        out.append(f"{what} predicts class {k} for all {len(y_pred)} validation images: it ignores the image, and "
                   f"its accuracy ({share:.2f}) is only that class's share of the images")
    if len(y_true) and len(np.unique(y_true)) == 1:
        out.append(f"all {len(y_true)} validation images are of class {int(y_true[0])}: kappa, AUC and balanced "
                   "accuracy are undefined or meaningless; validate on several classes")
    return out
