"""Interrupting a commit for real (not a test module): a child process stopped at a commit step and killed.

The child runs with ``MAMMOGRAPHY_COMMIT_PAUSE_AT`` (see :mod:`mammography.atomic`); when it announces the
pause on stderr it is sent SIGKILL, exactly as ``kill -9`` would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from mammography.atomic import PAUSE_ENV

#: commits a batch (or replaces a tree) described by a JSON file, under the outputs' lock
COMMIT_CHILD = """
import json, sys
from pathlib import Path
from mammography.atomic import FileBatch, OutputLock, replace_tree
spec = json.loads(Path(sys.argv[1]).read_text())
with OutputLock(folders=spec["folders"], files=spec["files"], trees=spec["trees"]) as lock:
    if spec["trees"]:
        replace_tree(spec["tree_tmp"], spec["trees"][0], lock.journal(spec["trees"][0]))
    else:
        batch = FileBatch()
        for dest, src in spec["add"]:
            batch.add(dest, Path(src).read_bytes())
        for path, root in spec["remove"]:
            batch.remove(path, root)
        batch.commit(lock.journal(spec["folders"][0]))
print("committed")
"""


def start_paused(argv: list[str], step, timeout: float = 600) -> subprocess.Popen | None:
    """Start ``argv`` stopping before commit ``step``; return it paused there (None if it finished first)."""
    env = {**os.environ, PAUSE_ENV: str(step)}
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = child.stderr.readline()
        if line.startswith(f"{PAUSE_ENV}: paused before step"):
            return child
        if not line and child.poll() is not None:
            assert child.returncode == 0, child.stderr.read()
            return None
    child.kill()
    raise AssertionError(f"{argv} did not reach commit step {step} in {timeout} s")


def kill_9(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait()


def run_until_paused(script: str, args: list[str], step, timeout: float = 120) -> bool:
    """Run python ``script`` stopping before commit ``step`` and kill it there; False if it finished first."""
    child = start_paused([sys.executable, "-c", script, *args], step, timeout)
    if child is None:
        return False
    kill_9(child)
    return True
