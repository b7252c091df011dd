"""Verdicts that follow from a number and its baseline, never from the number alone.

Every summary sentence of a report states a measured value together with
what it would be without the effect in question (a heatmap without any
preference, two unrelated maps, predictions that agree by chance, a random
deletion order) and says which side of that baseline the value is on. A
difference counts only when the value's 95 % confidence interval lies
clearly outside a band around the baseline:

* for shares and ratios the band is ``baseline × (1 ± RELATIVE_MARGIN)``
  (:func:`compare_share`);
* for paired differences (deletion/insertion against a random order) the
  interval of the mean difference must exclude 0 (:func:`compare_difference`).

Anything else is reported as "no clear difference", however reassuring the
point estimate looks; :data:`MARGIN_SENTENCE` states the rule in the text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RELATIVE_MARGIN",
    "MARGIN_SENTENCE",
    "BELOW",
    "ABOVE",
    "WITHIN",
    "Comparison",
    "compare_share",
    "compare_difference",
    "chance_agreement",
    "random_region_iou",
]

#: half-width of the "no difference" band around a share's baseline, relative to the baseline
RELATIVE_MARGIN = 0.25
MARGIN_SENTENCE = (
    f"A value counts as different from its baseline only when its 95 % confidence interval lies more than "
    f"{100 * RELATIVE_MARGIN:.0f} % of the baseline away from it (for differences against a random order: "
    f"when the interval of the mean difference excludes 0)."
)
BELOW, ABOVE, WITHIN = "below", "above", "within"


@dataclass(frozen=True)
class Comparison:
    """A value, its 95 % CI and its baseline, with the verdict of :func:`compare_share` / :func:`compare_difference`.

    Attributes
    ----------
    value, low, high : the mean and its confidence interval (NaN when unknown).
    baseline : the value without the effect.
    band : (low, high) of the no-difference band around the baseline.
    verdict : :data:`BELOW`, :data:`ABOVE` or :data:`WITHIN` (the interval
        reaches into the band, or the value is undefined).
    """

    value: float
    low: float
    high: float
    baseline: float
    band: tuple[float, float]
    verdict: str

    @property
    def clear(self) -> bool:
        """True when the value differs clearly from the baseline."""
        return self.verdict != WITHIN


def _finite(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _verdict(low: float, high: float, band: tuple[float, float]) -> str:
    if math.isnan(low) or math.isnan(high):
        return WITHIN
    if high < band[0]:
        return BELOW
    if low > band[1]:
        return ABOVE
    return WITHIN


def compare_share(value, low, high, baseline, margin: float = RELATIVE_MARGIN) -> Comparison:
    """Compare a share (or ratio) with its baseline using a band of ``± margin × baseline``.

    A missing interval (``low``/``high`` None or NaN) is taken as the value
    itself only when ``value`` is finite; an undefined value is never a
    clear difference.
    """
    value, baseline = _finite(value), _finite(baseline)
    low = _finite(low) if low is not None else value
    high = _finite(high) if high is not None else value
    if math.isnan(baseline):
        return Comparison(value, low, high, baseline, (math.nan, math.nan), WITHIN)
    band = (baseline * (1 - margin), baseline * (1 + margin))
    return Comparison(value, low, high, baseline, band, _verdict(low, high, band))


def compare_difference(differences, seed: int = 0) -> Comparison:
    """Mean of paired differences (e.g. deletion AUC − random-order AUC) against 0, with a bootstrap CI."""
    from mammography.analysis.maps import bootstrap_mean_ci

    ci = bootstrap_mean_ci(np.asarray(differences, dtype=np.float64), seed=seed)
    value, low, high = _finite(ci.mean), _finite(ci.low), _finite(ci.high)
    return Comparison(value, low, high, 0.0, (0.0, 0.0), _verdict(low, high, (0.0, 0.0)))


def chance_agreement(predictions: np.ndarray, classes=(1, 2, 3, 4)) -> float:
    """Share of images on which models with these class frequencies would agree by chance.

    ``predictions`` is (n_images, n_models); the result is
    ``sum_k prod_m p_m(k)`` with ``p_m(k)`` the share of images model ``m``
    predicts as class ``k`` (the chance term of Cohen's / Fleiss' kappa for
    all models agreeing).
    """
    p = np.asarray(predictions)
    if p.ndim != 2 or p.shape[0] == 0:
        return math.nan
    freq = np.stack([(p == k).mean(axis=0) for k in classes])  # (classes, models)
    return float(np.prod(freq, axis=1).sum())


def random_region_iou(fraction: float) -> float:
    """Expected IoU of two independent random regions that each cover ``fraction`` of an area: f / (2 − f)."""
    return float(fraction) / (2.0 - float(fraction))
