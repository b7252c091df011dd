"""Choose representative validation images per density class, deterministically.

Figures show a few images per true class. Which ones is a choice the caption
must state, so it is one of a few named strategies, and the same predictions
always give the same images (ties are broken by image path, never by the
order of rows in a CSV):

``confident`` (default)
    correct predictions, most confident first; then the misclassified ones,
    most confident first (only used when a class has too few correct ones).
``typical``
    correct predictions whose probability for the true class is closest to
    the class's median; then the misclassified ones the same way.
``errors``
    misclassified images, most confident (most wrong) first; then the correct
    ones, least confident first.
``random``
    a random sample, seeded (the run's seed by default).

With ``groups`` (the patient of each image, else its accession) every
strategy prefers distinct women: it walks its order taking only images of a
patient not shown yet in that class, then fills what is left in the same
order. So a row repeats a woman only when the class has fewer patients than
images asked for, and :attr:`ClassSelection.repeats_patients` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mammography.errors import ConfigError

__all__ = ["STRATEGIES", "ClassSelection", "select_per_class", "describe_strategy"]

STRATEGIES = ("confident", "typical", "errors", "random")

_DESCRIPTIONS = {
    "confident": "the most confident correct predictions, then the remaining images by confidence",
    "typical": "correct predictions closest to the class's median probability, then the remaining images",
    "errors": "misclassified images, most confident first, then the least confident correct predictions",
    "random": "a random sample (seed {seed})",
}


@dataclass(frozen=True)
class ClassSelection:
    """The images chosen for one true class.

    Attributes
    ----------
    label : true class, 1..4.
    indices : row indices into the arrays given to :func:`select_per_class`, in display order.
    requested : how many were asked for.
    available : how many validation images have this true class.
    strategy : the strategy used.
    n_patients : distinct patients among the chosen images (``None`` without groups).
    available_patients : distinct patients among the class's images (``None`` without groups).
    """

    label: int
    indices: tuple[int, ...]
    requested: int
    available: int
    strategy: str
    n_patients: int | None = None
    available_patients: int | None = None

    @property
    def repeats_patients(self) -> bool:
        """True when two chosen images come from one patient (only when the class has too few patients)."""
        return self.n_patients is not None and self.n_patients < len(self.indices)

    @property
    def shortfall(self) -> bool:
        """True when the class has fewer images than requested."""
        return len(self.indices) < self.requested

    @property
    def note(self) -> str:
        """``"2 of 4 requested"`` when short, ``"no validation images"`` when empty, else ``""``."""
        if self.available == 0:
            return "no validation images"
        if self.shortfall:
            return f"{len(self.indices)} of {self.requested} requested"
        return ""


def describe_strategy(strategy: str, seed: int | None = None) -> str:
    """One phrase for captions, e.g. ``"the most confident correct predictions, then ..."``."""
    _check_strategy(strategy)
    return _DESCRIPTIONS[strategy].format(seed=seed)


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown selection {strategy!r}; use one of {', '.join(STRATEGIES)}")


def _order(keys: list[np.ndarray], names: np.ndarray) -> np.ndarray:
    """Indices sorted by ``keys`` (first = primary, ascending) then by ``names``."""
    # np.lexsort sorts by the last key first
    return np.lexsort([names, *reversed(keys)])


def select_per_class(
    y_true,
    y_pred,
    probabilities,
    image_paths,
    *,
    per_class: int = 4,
    strategy: str = "confident",
    seed: int = 0,
    classes: tuple[int, ...] = (1, 2, 3, 4),
    groups=None,
) -> dict[int, ClassSelection]:
    """Pick up to ``per_class`` images of each true class.

    Parameters
    ----------
    y_true, y_pred : (N,) int labels 1..4.
    probabilities : (N, 4) class probabilities (column k = class k + 1).
    image_paths : (N,) strings; the final tie-break, so the choice does not
        depend on row order.
    per_class : images wanted per class (>= 1).
    strategy : one of :data:`STRATEGIES`.
    seed : seed of the ``random`` strategy.
    classes : the class labels to return, in order.
    groups : optional (N,) patient (or exam) identifier per image; images of
        patients not yet chosen in a class come first. Empty or missing
        values count as patients of their own.

    Returns
    -------
    dict label -> :class:`ClassSelection` (every label in ``classes``, empty
    when the class has no images).
    """
    _check_strategy(strategy)
    if per_class < 1:
        raise ConfigError(f"--per-class must be at least 1, got {per_class}")
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    names = np.asarray([str(p) for p in image_paths])
    if not (len(y_true) == len(y_pred) == len(probs) == len(names)):
        raise ConfigError("y_true, y_pred, probabilities and image_paths must have the same length")
    patient = _group_keys(groups, names)
    if len(patient) != len(names):
        raise ConfigError("groups must give one patient per image")
    confidence = probs[np.arange(len(probs)), y_pred - 1] if len(probs) else np.zeros(0)
    p_true = probs[np.arange(len(probs)), y_true - 1] if len(probs) else np.zeros(0)
    wrong = (y_true != y_pred).astype(np.int64)

    out: dict[int, ClassSelection] = {}
    for label in classes:
        idx = np.flatnonzero(y_true == label)
        if strategy == "confident":
            order = _order([wrong[idx], -confidence[idx]], names[idx])
        elif strategy == "typical":
            ok = idx[wrong[idx] == 0]
            median = float(np.median(p_true[ok])) if len(ok) else float(np.median(p_true[idx])) if len(idx) else 0.0
            order = _order([wrong[idx], np.abs(p_true[idx] - median)], names[idx])
        elif strategy == "errors":
            # wrong first (most confident first), then right (least confident first)
            key = np.where(wrong[idx] == 1, -confidence[idx], confidence[idx])
            order = _order([1 - wrong[idx], key], names[idx])
        else:  # random: permute a name-sorted list so row order does not matter
            by_name = np.argsort(names[idx], kind="stable")
            rng = np.random.default_rng([int(seed), int(label)])
            order = by_name[rng.permutation(len(idx))]
        ranked = idx[order]
        chosen = ranked[:per_class] if groups is None else _distinct_first(ranked, patient, per_class)
        out[label] = ClassSelection(
            label=int(label), indices=tuple(int(i) for i in chosen), requested=int(per_class),
            available=int(len(idx)), strategy=strategy,
            n_patients=None if groups is None else len(set(patient[chosen])),
            available_patients=None if groups is None else len(set(patient[idx])),
        )
    return out


def _group_keys(groups, names: np.ndarray) -> np.ndarray:
    """Patient key per image; a missing value becomes the image's own name (a patient of its own)."""
    if groups is None:
        return names
    keys = []
    for g, name in zip(groups, names):
        text = "" if g is None or (isinstance(g, float) and np.isnan(g)) else str(g).strip()
        keys.append(f"patient:{text}" if text and text.lower() != "nan" else f"image:{name}")
    return np.asarray(keys)


def _distinct_first(ranked: np.ndarray, patient: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` of ``ranked`` taking one image per patient first, then the rest in rank order."""
    seen: set = set()
    first, rest = [], []
    for i in ranked:
        (rest if patient[i] in seen else first).append(i)
        seen.add(patient[i])
    return np.asarray((first + rest)[:n], dtype=np.int64)
