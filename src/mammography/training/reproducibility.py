"""What is needed to reproduce a run: code version, command line, library versions, seeds.

:func:`collect_reproducibility` is written into ``summary.json`` under
``reproducibility``; :func:`seeded` makes a training run deterministic on the
CPU without leaving global random state or torch's determinism switch changed
for the rest of the process.
"""

from __future__ import annotations

import contextlib
import platform
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

__all__ = ["git_state", "collect_reproducibility", "seeded", "seed_worker"]

_GIT_TIMEOUT_S = 10


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git binary, hung filesystem
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(path: str | Path | None = None) -> tuple[str | None, bool | None]:
    """Commit hash and dirty flag of the git work tree holding ``path``.

    Parameters
    ----------
    path : a file or folder inside the repository; default: this package's
        source folder (the code that trains is what must be reproducible).

    Returns
    -------
    ``(commit, dirty)``; ``(None, None)`` outside a repository or without git,
    ``(None, dirty)`` in a repository that has no commit yet.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    if where.is_file():
        where = where.parent
    if _git(["rev-parse", "--is-inside-work-tree"], where) != "true":
        return None, None
    commit = _git(["rev-parse", "HEAD"], where)
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    dirty = None if status is None else bool(status)
    return commit or None, dirty


def collect_reproducibility(command_line: list[str] | str | None = None) -> dict:
    """The ``reproducibility`` block of ``summary.json``.

    Parameters
    ----------
    command_line : the command that started the run; default ``sys.argv``
        joined with spaces.

    Returns
    -------
    dict with ``git_commit``, ``git_dirty``, ``command_line``, ``python``,
    ``torch``, ``torchvision``, ``numpy``, ``platform``.
    """
    import torchvision

    commit, dirty = git_state()
    if command_line is None:
        command_line = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""
    elif not isinstance(command_line, str):
        command_line = " ".join(str(part) for part in command_line)
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "command_line": command_line,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


@contextlib.contextmanager
def seeded(seed: int, deterministic: bool = True):
    """Seed Python, NumPy and torch for the duration of a ``with`` block.

    Torch's global generators (CPU, and CUDA when present) are forked and
    restored on exit, as are Python's and NumPy's global states and torch's
    deterministic-algorithms switch, so callers (and other tests in the same
    process) see no change.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        if deterministic:
            # warn_only: a few CUDA kernels have no deterministic version; the
            # CPU path that the determinism promise covers has all of them
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
            random.setstate(py_state)
            np.random.set_state(np_state)


def seed_worker(worker_id: int) -> None:  # noqa: ARG001 - DataLoader API
    """``worker_init_fn`` for DataLoader: derive NumPy/Python seeds from torch's per-worker seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
