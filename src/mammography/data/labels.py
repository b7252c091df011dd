"""BI-RADS breast-density labels: names, letters and parsing.

The project numbers the four BI-RADS density categories 1..4 everywhere
(1 = A almost entirely fatty ... 4 = D extremely dense). Datasets write them
as 1..4, as letters A..D, or 0-based as 0..3; :func:`parse_label` maps every
form onto 1..4.

Values that mean "no density assessment" are *unknown*, not errors:
an empty cell, NaN, ``5`` (``4`` in 0-based columns; the earlier
project's "class 5" = not assessable / implant), and the markers in
:data:`UNKNOWN_MARKERS`. :func:`parse_label` returns ``None`` for them so the
caller can drop them and log how many it dropped. Anything else that is not
a label (``"7"``, ``"2.5"``, ``"dense"``) raises :class:`ValueError`.
"""

from __future__ import annotations

import math
import re

CLASS_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
"""Letter of class ``k`` at index ``k - 1``."""

CLASS_NAMES: tuple[str, ...] = (
    "almost entirely fatty",
    "scattered fibroglandular",
    "heterogeneously dense",
    "extremely dense",
)
"""BI-RADS (5th edition) description of class ``k`` at index ``k - 1``."""

NUM_CLASSES = 4

UNKNOWN_MARKERS: frozenset[str] = frozenset(
    {"", "nan", "none", "null", "na", "n/a", "unknown", "?", "-", "x"}
)
"""Lower-cased label texts that mean "not assessed" (dropped, counted)."""

# "A", "b", "3", "BI-RADS C", "birads 2", "density D", "3.0"
_LABEL_RE = re.compile(
    r"^(?:(?:bi-?rads|density|class)[\s_:-]*)?([a-d]|\d+(?:\.0+)?)$", re.IGNORECASE
)


def parse_label(value, zero_based: bool = False) -> int | None:
    """Map one density label onto 1..4.

    Parameters
    ----------
    value : str, int, float or None
        The label as read from a CSV cell: ``1..4``, ``"A".."D"`` (any case,
        optionally prefixed ``"BI-RADS "``/``"density "``), ``0..3`` when
        `zero_based`, or an unknown marker.
    zero_based : bool, optional
        Numbers are 0..3 (class 5 is then ``4``). Letters are unaffected.

    Returns
    -------
    int or None
        The class in 1..4, or ``None`` for class 5 and unknown markers
        (empty, NaN, ``"unknown"``, ``"?"``, ... see :data:`UNKNOWN_MARKERS`).

    Raises
    ------
    ValueError
        For anything else, including ``0`` in a 1-based column (which
        usually means the column is really 0-based; the message says so).
    """
    if value is None or isinstance(value, bool):
        if value is None:
            return None
        raise ValueError(f"density label {value!r} is not a class")
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if not value.is_integer():
            raise ValueError(f"density label {value!r} is not a whole class number")
        value = int(value)
    text = str(value).strip()
    if text.lower() in UNKNOWN_MARKERS:
        return None
    match = _LABEL_RE.match(text)
    if match is None:
        raise ValueError(f"density label {text!r} is not 1-4, A-D or 0-3")
    token = match.group(1).upper()
    if token.isalpha():
        return CLASS_LETTERS.index(token) + 1
    number = int(float(token))
    if zero_based:
        number += 1
    if number == NUM_CLASSES + 1:
        return None  # class 5: not assessable
    if 1 <= number <= NUM_CLASSES:
        return number
    if number == 0:
        raise ValueError(
            "density label 0 in a 1-based column: if the labels are 0..3, "
            "name the column 'label_0based' (or pass zero_based=True)"
        )
    raise ValueError(f"density label {text!r} is outside {'0-3' if zero_based else '1-4'}")


def class_letter(k: int) -> str:
    """Letter of class ``k`` (1..4): ``class_letter(3) == "C"``."""
    _check_class(k)
    return CLASS_LETTERS[int(k) - 1]


def class_title(k: int) -> str:
    """Human title of class ``k`` (1..4), e.g. ``"1 (A) almost entirely fatty"``."""
    _check_class(k)
    k = int(k)
    return f"{k} ({CLASS_LETTERS[k - 1]}) {CLASS_NAMES[k - 1]}"


def _check_class(k: int) -> None:
    # numpy integers are not ``int``: accept anything integral in 1..4
    try:
        ok = not isinstance(k, bool) and int(k) == k and 1 <= int(k) <= NUM_CLASSES
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"density class must be 1..4, got {k!r}")
