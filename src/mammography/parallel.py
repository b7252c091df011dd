"""Independent jobs spread over worker processes.

Two ways to start a worker: *spawn* (a fresh interpreter that imports what
the jobs need; safe whatever threads the caller holds, but it re-imports the
caller's main script, which must then guard its work with ``if __name__ ==
"__main__"``) and *fork* (a copy of the caller, where only the forking thread
survives: the jobs must not rely on the caller's threads, and torch's thread
pool is set to one thread in each worker). Spawning costs an interpreter
start and the imports per worker, so small batches of work stay in the
calling process (:func:`resolve_workers`).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterable, Iterator

from mammography.machine import available_cpus

__all__ = ["map_in_processes", "resolve_workers"]


def resolve_workers(workers: int | None, n_jobs: int, *, min_jobs: int = 64, most: int = 8) -> int:
    """How many processes to use for ``n_jobs`` jobs.

    ``None`` = automatic: one (the calling process) for fewer than
    ``min_jobs`` jobs, else one per CPU this process may use, at most
    ``most``; an explicit number is capped at ``n_jobs`` (and is at least 1).
    """
    if workers is None:
        if n_jobs < min_jobs:
            return 1
        return max(1, min(most, available_cpus()))
    return max(1, min(int(workers), n_jobs))


def _one_thread() -> None:
    """Worker start: torch (when the worker has it) runs on one thread: the workers share the machine's
    cores, and a forked copy of the caller's thread pool must not be used."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def map_in_processes(fn: Callable, jobs: Iterable, n_workers: int, *, chunksize: int = 4,
                     start: str = "spawn") -> Iterator:
    """``map(fn, jobs)`` in order, in ``n_workers`` processes when more than one.

    ``fn`` must be a module-level function and the jobs picklable. ``start``
    is ``"spawn"`` or ``"fork"`` (module docstring; fork falls back to spawn
    where the platform has no fork).
    """
    if n_workers <= 1:
        yield from map(fn, jobs)
        return
    from concurrent.futures import ProcessPoolExecutor

    method = start if start in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=context, initializer=_one_thread) as pool:
        yield from pool.map(fn, jobs, chunksize=chunksize)
