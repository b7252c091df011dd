"""Where the work runs: the torch device and the number of loader processes.

Every command that runs a model resolves ``--device`` with
:func:`resolve_device` and ``--num-workers`` with :func:`resolve_num_workers`,
so ``auto`` means the same thing everywhere.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mammography.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a device is resolved: the command line's --help reads this module
    import torch

__all__ = ["MAX_AUTO_WORKERS", "available_cpus", "default_num_workers", "resolve_device", "resolve_num_workers"]

#: most decoding processes ``auto`` starts: a GPU at ~3,000 images/s is fed by a few
#: processes reading decoded-image cache entries; more only cost memory
MAX_AUTO_WORKERS = 4


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else the CPU; ``"cuda"`` without a GPU is an error.

    Raises
    ------
    ConfigError
        A CUDA device was asked for on a machine without one, or the name is not a device.
    """
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_num_workers(device: torch.device | str | None = None) -> int:
    """Loader processes ``auto`` starts for a model on ``device`` (0 = load in the main process).

    With the model on a GPU (or ``device`` None: not known), every core but
    one, at most :data:`MAX_AUTO_WORKERS`. With the model on the CPU, only the
    cores torch's own threads leave free: a loader process on a core that an
    intra-op thread needs stalls the model's every parallel step (on 2 cores,
    one worker made a warm-cache sweep 3.4x slower than none).
    """
    cpus = available_cpus()
    if device is not None and str(device).split(":")[0] == "cpu":
        import torch

        return max(0, min(MAX_AUTO_WORKERS, cpus - torch.get_num_threads()))
    return max(0, min(MAX_AUTO_WORKERS, cpus - 1))


def resolve_num_workers(value: int | str | None, device: torch.device | str | None = None) -> int:
    """``None`` / ``"auto"`` -> :func:`default_num_workers` for ``device``; else the number itself (>= 0).

    Raises
    ------
    ConfigError
        A negative or non-integer count.
    """
    if value is None or value == "auto":
        return default_num_workers(device)
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--num-workers must be a number of processes or auto, got {value!r}") from None
    if count < 0 or count != float(value):
        raise ConfigError(f"--num-workers must be 0 or more, got {value!r}")
    return count
