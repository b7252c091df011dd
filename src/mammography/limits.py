"""Bounds on parameters, checked before any expensive work.

A value from a flag or from a run's ``summary.json`` that no real use has
(``img_size: 60000``, ``mean: NaN``, ``--batch-size 10**9``) would otherwise
surface after minutes of work as a traceback, an out-of-memory kill or a
figure of black tiles. Every bound here is documented in the README
("Limits").

* :data:`MIN_IMG_SIZE`..:data:`MAX_IMG_SIZE`: the side of the square model
  input. EfficientNet-B0 density models are trained at 224-1024 px; at
  2048 px one Grad-CAM batch of 8 already needs several GB.
* :data:`MAX_BATCH_SIZE`: images per batch.
* :data:`MAX_NORMALISATION`: the largest absolute value of a normalisation
  mean or standard deviation (inputs are in [0, 1]; any real statistic is
  far below it). A std must also be positive.
"""

from __future__ import annotations

import math

from mammography.errors import ConfigError, MammographyError

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_IMG_SIZE",
    "MAX_NORMALISATION",
    "MIN_IMG_SIZE",
    "check_float",
    "check_img_size",
    "check_int",
    "check_normalisation",
]

MIN_IMG_SIZE = 32
MAX_IMG_SIZE = 2048
MAX_BATCH_SIZE = 1024
MAX_NORMALISATION = 1000.0


def check_int(value, name: str, low: int, high: int | None = None, error: type[MammographyError] = ConfigError) -> int:
    """``value`` as an int in ``low..high`` (a whole float is accepted), else ``error`` naming ``name``."""
    whole = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value == int(value))
    if isinstance(value, bool) or not whole or value < low or (high is not None and value > high):
        span = f"{low}..{high}" if high is not None else f"at least {low}"
        raise error(f"{name} must be a whole number {span}, got {value!r}")
    return int(value)


def check_float(value, name: str, low: float = -math.inf, high: float = math.inf, *, open_low: bool = False,
                error: type[MammographyError] = ConfigError) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``open_low``), else ``error``."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise error(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise error(f"{name} must be a finite number, got {value!r}")
    if number < low or number > high or (open_low and number == low):
        lo = "(" if open_low else "["
        raise error(f"{name} must be in {lo}{low:g}, {high:g}], got {value!r}")
    return number


def check_img_size(value, name: str = "img_size", error: type[MammographyError] = ConfigError) -> int:
    """A model input side within :data:`MIN_IMG_SIZE`..:data:`MAX_IMG_SIZE`."""
    return check_int(value, name, MIN_IMG_SIZE, MAX_IMG_SIZE, error)


def check_normalisation(values, name: str, *, positive: bool = False,
                        error: type[MammographyError] = ConfigError) -> tuple[float, ...]:
    """Finite normalisation statistics (``positive``: a std, > 0), each within :data:`MAX_NORMALISATION`."""
    low = 0.0 if positive else -MAX_NORMALISATION
    return tuple(check_float(v, name, low, MAX_NORMALISATION, open_low=positive, error=error) for v in values)
