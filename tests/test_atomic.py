"""All-or-nothing outputs: atomic files, output locks, journaled commits, stale temporaries.

Interruptions are real: a child process is stopped at a commit step
(``MAMMOGRAPHY_COMMIT_PAUSE_AT``) and killed with SIGKILL, then the next
writer's lock repairs the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from _interrupt import COMMIT_CHILD, run_until_paused
from mammography.atomic import (
    JOURNAL_NAME,
    TEMP_SUFFIX,
    FileBatch,
    OutputLock,
    remove_stale_temps,
    sha256_file,
    temp_path,
    write_atomic,
)
from mammography.errors import OutputError


def _files(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (lock files aside)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".mmlock")}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------- single files and batches


def test_write_atomic_replaces_whole_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "f.txt"
    write_atomic(path, "old")
    write_atomic(path, b"new")
    write_atomic(tmp_path / "g.bin", lambda fh: fh.write(b"\x00\x01"))
    assert path.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["f.txt", "g.bin"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # plain open() permissions, not 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("case", ["below a file", "a folder"])
def test_write_atomic_refuses_in_one_line(tmp_path, case):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    (tmp_path / "folder").mkdir()
    target = blocker / "out.txt" if case == "below a file" else tmp_path / "folder"
    with pytest.raises(OutputError) as info:
        write_atomic(target, "data")
    assert "\n" not in str(info.value) and str(target) in str(info.value)
    assert not list(tmp_path.rglob(f"*{TEMP_SUFFIX}"))


def test_file_batch_writes_all_or_nothing(tmp_path):
    batch = FileBatch()
    batch.add(tmp_path / "a" / "one.txt", "one")
    batch.add(tmp_path / "two.bin", b"\x00\x01")
    assert not (tmp_path / "two.bin").exists()  # staged only
    written = batch.commit()
    assert [p.name for p in written] == ["one.txt", "two.bin"]
    assert (tmp_path / "a" / "one.txt").read_text() == "one"
    assert sha256_file(tmp_path / "two.bin") == batch.sha256(tmp_path / "two.bin")

    # a destination that cannot be written: nothing else changes, no temporary file is left
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where a folder is needed")
    failing = FileBatch()
    failing.add(tmp_path / "a" / "one.txt", "changed")
    failing.add(blocker / "x.txt", "x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        failing.commit()
    assert (tmp_path / "a" / "one.txt").read_text() == "one"
    assert not list(tmp_path.rglob(f"*{TEMP_SUFFIX}"))
    with pytest.raises(OutputError, match="same file"):
        batch.add(tmp_path / "two.bin", b"again")


def test_stale_files_go_before_the_last_file(tmp_path):
    old = tmp_path / "old" / "deep" / "fig.png"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"png")
    batch = FileBatch()
    batch.add(tmp_path / "new.png", b"png2")
    batch.add(tmp_path / "manifest.json", "{}")
    batch.remove(old, prune_up_to=tmp_path)
    batch.commit(tmp_path / JOURNAL_NAME)
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "new.png"]  # empty folders pruned, journal gone


# --------------------------------------------------------------------------- disk full


def test_full_disk_is_one_line_and_changes_nothing(tmp_path):
    """RLIMIT_FSIZE makes writes past 64 kB fail with EFBIG, as a full disk fails with ENOSPC."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_text("previous")
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from mammography.atomic import FileBatch, OutputLock
        from mammography.errors import OutputError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        batch = FileBatch()
        batch.add({str(tmp_path / 'out' / 'a.txt')!r}, "new")
        batch.add({str(tmp_path / 'out' / 'big.bin')!r}, b"x" * 200_000)
        try:
            with OutputLock(folders=[{str(tmp_path / 'out')!r}]) as lock:
                batch.commit(lock.journal({str(tmp_path / 'out')!r}))
        except OutputError as exc:
            print(exc)
            sys.exit(2)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    line = out.stdout.strip()
    assert "\n" not in line and "big.bin" in line and "too large" in line
    assert _files(tmp_path / "out") == {"a.txt": hashlib.sha256(b"previous").hexdigest()}


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 64 kB file system (tmpfs) mounted at tmp_path / 'fs'; skipped where mounting is not allowed."""
    mounted = []

    def mount(*options: str) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=64k", *options)), "tmpfs", str(point)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip("mounting a small tmpfs needs root with CAP_SYS_ADMIN")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_really_full_disk_and_read_only_file_system_are_one_line(small_filesystem):
    disk = small_filesystem()
    (disk / "assets").mkdir()
    (disk / "assets" / "a.txt").write_text("previous")
    batch = FileBatch()
    batch.add(disk / "assets" / "a.txt", "new")
    batch.add(disk / "assets" / "big.bin", b"x" * 200_000)
    with pytest.raises(OutputError) as info:
        with OutputLock(folders=[disk / "assets"]) as lock:
            batch.commit(lock.journal(disk / "assets"))
    assert "the disk is full" in str(info.value) and "\n" not in str(info.value)
    assert _files(disk / "assets") == {"a.txt": hashlib.sha256(b"previous").hexdigest()}

    read_only = small_filesystem("ro")
    with pytest.raises(OutputError) as info:
        with OutputLock(folders=[read_only / "assets"]):
            pass
    assert "read-only" in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- locks


def test_second_writer_fails_with_one_line_naming_the_first(tmp_path):
    out = tmp_path / "assets"
    with OutputLock(folders=[out], command="mammography report-pack"):
        with pytest.raises(OutputError) as info:
            with OutputLock(folders=[out]):
                pass
    message = str(info.value)
    assert "\n" not in message and "being written by another mammography process" in message
    assert f"pid {os.getpid()}" in message and "report-pack" in message
    with OutputLock(folders=[out]):  # released: free again
        pass
    assert not out.exists()  # the lock made the folder; nothing was written, so nothing is left


def test_second_writer_can_wait(tmp_path):
    out = tmp_path / "tex"
    first = OutputLock(files=[out / "a.tex"]).__enter__()
    threading.Timer(0.5, first.__exit__, (None, None, None)).start()
    t0 = time.monotonic()
    with OutputLock(files=[out / "a.tex"], wait=30):
        assert time.monotonic() - t0 >= 0.4


def test_lock_of_a_killed_process_is_free(tmp_path):
    out = tmp_path / "assets"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom mammography.atomic import OutputLock\n"
         f"with OutputLock(folders=[{str(out)!r}]):\n    print('held', flush=True)\n    time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"pid {holder.pid}"):
            with OutputLock(folders=[out]):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with OutputLock(folders=[out]):
        pass


@pytest.mark.parametrize("kind", ["folder is a file", "file is a folder", "below a file", "file is a fifo"])
def test_unwritable_targets_are_refused_before_any_work(tmp_path, kind):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    lock = {
        "folder is a file": OutputLock(folders=[blocker]),
        "file is a folder": OutputLock(files=[tmp_path / "dir"]),
        "below a file": OutputLock(folders=[blocker / "assets"]),
        "file is a fifo": OutputLock(files=[tmp_path / "fifo"]),
    }[kind]
    with pytest.raises(OutputError) as info:
        with lock:
            pass
    assert "\n" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["blocker", "dir", "fifo"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    out = tmp_path / "assets"
    (out / "gradcam").mkdir(parents=True)
    host = temp_path(out / "x").name.split(".")[-2].split("-")[0]
    stale_file = out / "gradcam" / f".fig.png.{host}-{dead}-0123abcd{TEMP_SUFFIX}"
    stale_dir = tmp_path / f".site.{host}-{dead}-0123abcd{TEMP_SUFFIX}"
    live = out / f".fig.png.{host}-{alive}-0123abcd{TEMP_SUFFIX}"
    foreign = out / f".fig.png.ffffff-{dead}-0123abcd{TEMP_SUFFIX}"  # another machine's: not ours to judge
    for path in (stale_file, live, foreign):
        path.write_text("partial")
    stale_dir.mkdir()
    (stale_dir / "index.html").write_text("partial")
    with OutputLock(folders=[out], trees=[tmp_path / "site"]):
        pass
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and foreign.exists()
    assert remove_stale_temps(out) == 0


# --------------------------------------------------------------------------- killed at every step


def _pack(root: Path, names: dict[str, bytes]) -> dict:
    """Files for a tiny 'pack' whose manifest lists every other file with its hash."""
    manifest = {"assets": [{"path": n, "sha256": hashlib.sha256(d).hexdigest()} for n, d in names.items()]}
    return {**names, "manifest.json": json.dumps(manifest).encode()}


def _consistent(folder: Path) -> bool:
    """Every file is listed in the manifest with its hash, and every listed file exists."""
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = {a["path"]: a["sha256"] for a in manifest["assets"]}
    present = {k: v for k, v in _files(folder).items() if k != "manifest.json"}
    return listed == present


def test_commit_killed_at_every_step_leaves_the_old_or_the_new_files(tmp_path):
    old = _pack(tmp_path, {"a.png": b"A1", "gone/b.png": b"B1", "c.png": b"C1"})
    new = _pack(tmp_path, {"a.png": b"A2", "c.png": b"C2", "d/e.png": b"E2"})
    pristine, out, staged = tmp_path / "pristine", tmp_path / "out", tmp_path / "staged"
    for name, data in old.items():
        (pristine / name).parent.mkdir(parents=True, exist_ok=True)
        (pristine / name).write_bytes(data)
    for name, data in new.items():
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / name).write_bytes(data)
    order = ["a.png", "c.png", "d/e.png", "manifest.json"]  # the manifest last
    spec = {"folders": [str(out)], "files": [], "trees": [],
            "add": [[str(out / n), str(staged / n)] for n in order],
            "remove": [[str(out / "gone" / "b.png"), str(out)]]}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    old_state = {k: hashlib.sha256(v).hexdigest() for k, v in old.items()}
    new_state = {k: hashlib.sha256(v).hexdigest() for k, v in new.items()}
    outcomes = []
    for step in range(100):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(pristine, out)
        if not run_until_paused(COMMIT_CHILD, [str(spec_path)], step):
            break
        with OutputLock(folders=[out]):  # the next run: completes or rolls back, removes temporaries
            pass
        state = _files(out)
        assert state in (old_state, new_state), (step, state)
        assert _consistent(out)
        outcomes.append("new" if state == new_state else "old")
    # 4 temporary files + journal + 3 renames + 1 stale removal + manifest + journal removal
    assert len(outcomes) == 11
    assert outcomes == ["old"] * 5 + ["new"] * 6  # old until the journal exists, new from then on


def test_tree_replacement_killed_at_every_step(tmp_path):
    site = tmp_path / "explorer"
    outcomes = []
    for step in range(20):
        for leftover in tmp_path.glob(f".explorer.*{TEMP_SUFFIX}"):
            shutil.rmtree(leftover)
        shutil.rmtree(site, ignore_errors=True)
        site.mkdir()
        (site / "index.html").write_text("old")
        tmp = temp_path(site)
        tmp.mkdir()
        (tmp / "index.html").write_text("new")
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"folders": [], "files": [], "trees": [str(site)], "tree_tmp": str(tmp)}))
        # the temporary folder is the (dead) child's own in real use; here it is made by this process
        if not run_until_paused(COMMIT_CHILD, [str(spec)], step):
            break
        with OutputLock(trees=[site]):
            pass
        outcomes.append((site / "index.html").read_text())
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX) and p != tmp]
        assert leftovers == [] and sorted(p.name for p in site.iterdir()) == ["index.html"]
    # journal, old aside, new in, old removed, journal removed: killed before the journal -> old, after -> new
    assert outcomes == ["old"] + ["new"] * 4


def test_resource_module_available():
    assert resource.RLIMIT_FSIZE  # the disk-full test relies on it (Linux)


def test_damaged_or_foreign_journal_is_dropped_without_touching_files(tmp_path, caplog):
    out = tmp_path / "assets"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    journals = [
        "{not json",
        json.dumps({"format": 1, "kind": "files", "files": [{"path": "x"}]}),
        # renames only move this module's temporaries; removals stay inside their folder
        json.dumps({"format": 1, "kind": "files", "files": [{"path": str(out / "keep.txt"), "temp": str(outside)}],
                    "remove": [{"path": str(outside), "root": str(out)}]}),
    ]
    for text in journals:
        (out / JOURNAL_NAME).write_text(text)
        with OutputLock(folders=[out]):
            pass
        assert not (out / JOURNAL_NAME).exists()
        assert (out / "keep.txt").read_text() == "mine" and outside.read_text() == "not yours"
