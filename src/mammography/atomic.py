"""All-or-nothing outputs: atomic files, output locks and journaled commits.

Every command that writes results (``report-pack``, ``analyze``, ``explain``,
``explore``, ``train-density``) writes through this module, so that a reader
(an article, a later command, a colleague) finds either the previous complete
outputs or the new complete ones, never a mix, whatever happens to the
writing process:

* :func:`write_atomic` writes one file through a temporary file beside it,
  ``fsync`` and :func:`os.replace`;
* :class:`OutputLock` gives one process the right to write some output
  targets (a folder written into, a file, or a folder replaced whole). It is
  taken before the expensive work, so a second writer of the same output
  fails at once with one line naming the first (or waits, with ``wait``). On
  taking it the folder is repaired: an interrupted commit of an earlier run
  is completed (:func:`recover`) and temporary files of killed runs are
  removed. The lock is an ``flock`` on a small lock file, released by the
  kernel when the holder dies (``kill -9`` included);
* :class:`FileBatch` collects outputs in memory and commits them: every file
  is first written in full to a temporary file beside its destination; then
  a journal listing the renames is written; then the files are renamed into
  place (stale outputs of the previous run removed before the last file,
  the manifest, goes in) and the journal is deleted. A process killed before
  the journal exists leaves only temporary files (the previous outputs are
  untouched; the next run removes them); killed after, the next run
  completes the renames from the journal;
* :func:`replace_tree` swaps a whole folder (the explorer site) the same way.

Temporary files are named ``.<name>.<host>-<pid>-<random>.mmtmp``; the next
writer removes those of processes of this machine that no longer run.
Errors of the file system (full disk, read-only, no permission, a path below
a regular file, a folder where a file should be) become one-line
:class:`~mammography.errors.OutputError`\\ s that name the path.

For tests, the environment variable ``MAMMOGRAPHY_COMMIT_PAUSE_AT`` makes a
commit print one line to stderr and stop before its step ``K`` (a number,
counted from 0, or the step's description such as ``move
report_manifest.json``) until the process is killed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from mammography.errors import OutputError

__all__ = [
    "FileBatch",
    "OutputLock",
    "PAUSE_ENV",
    "describe_os_error",
    "recover",
    "remove_stale_temps",
    "replace_tree",
    "sha256_bytes",
    "sha256_file",
    "temp_path",
    "write_atomic",
]

log = logging.getLogger(__name__)

#: environment variable that stops a commit before step K (tests kill the process there)
PAUSE_ENV = "MAMMOGRAPHY_COMMIT_PAUSE_AT"
TEMP_SUFFIX = ".mmtmp"
LOCK_NAME = ".mammography.mmlock"
JOURNAL_NAME = ".mammography.mmjournal"
#: a folder target with less free space than this is reported as full before any work
MIN_FREE_BYTES = 1 << 20
#: journals are small (paths and hashes); anything bigger is not ours
_MAX_JOURNAL_BYTES = 64 << 20
_JOURNAL_FORMAT = 1
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_TEMP_RE = re.compile(r"^\.(?P<name>.*)\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + "$")
#: how much of a destination name a temporary name keeps (file names are limited to 255 bytes)
_NAME_KEPT = 120

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EFBIG: "the file is too large for the file system",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EEXIST: "a file with that name is in the way",
    errno.ELOOP: "too many symbolic links",
}


# --------------------------------------------------------------------------- small pieces


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_os_error(exc: OSError, path: str | Path, doing: str = "write") -> OutputError:
    """One-line :class:`OutputError` for a failed file operation on ``path``."""
    reason = _REASONS.get(exc.errno or -1) or " ".join(str(exc.strerror or exc).split())
    culprit = exc.filename if exc.filename not in (None, str(path)) else None
    where = f" ({culprit})" if culprit else ""
    return OutputError(
        f"cannot {doing} {path}{where}: {reason}; free some space, fix the permissions or choose another output"
    )


def temp_path(path: str | Path) -> Path:
    """A fresh temporary name beside ``path`` (``.<name>.<host>-<pid>-<random>.mmtmp``)."""
    path = Path(path)
    return path.parent / f".{path.name[:_NAME_KEPT]}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _owner_gone(name: str) -> bool:
    """True for a temporary name of a process of this machine that no longer runs."""
    match = _TEMP_RE.match(name)
    if match is None or match["host"] != _HOST:
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the renames are still atomic
        pass
    finally:
        os.close(fd)


def _mkdirs(folder: Path, created: list[Path] | None = None, target: Path | None = None) -> None:
    """``mkdir -p`` that records the folders it made and reports failures in one line (naming ``target``)."""
    what = f"write {target}" if target is not None else f"create {folder}"
    missing = []
    probe = folder
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: mkdir would fail with a confusing message
            raise OutputError(f"cannot {what}: {probe} is a broken symbolic link")
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"cannot {what}: {probe} is a file, not a folder; choose another output")
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise OutputError(f"cannot {what}: {path} is a file, not a folder") from None
            continue
        except OSError as exc:
            raise describe_os_error(exc, target or folder, "write" if target is not None else "create") from None
        if created is not None:
            created.append(path)


def _write_temp(path: Path, data: bytes | Callable[[BinaryIO], None], durable: bool = True) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file) to a new temporary file beside ``path``."""
    _mkdirs(path.parent, target=path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder, not a file; choose another output file")
    tmp = temp_path(path)
    try:
        # O_EXCL: never follow or reuse something already there; 0o666 & ~umask, like open()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise describe_os_error(exc, path) from None
        raise
    return tmp


def _replace(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as exc:
        raise describe_os_error(exc, dst) from None


def write_atomic(path: str | Path, data: bytes | str | Callable[[BinaryIO], None], *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file and :func:`os.replace`.

    Readers see the old file or the complete new one, never a part.

    Parameters
    ----------
    path : destination (its folders are created).
    data : bytes, text (written as UTF-8) or a function that writes to the
        open binary temporary file (e.g. ``lambda fh: np.save(fh, a)``).
    durable : ``fsync`` the file before the rename (off for caches, whose
        loss only costs time).

    Raises
    ------
    OutputError
        The file system refused (message in one line, nothing left behind).
    """
    path = Path(path)
    tmp = _write_temp(path, data.encode("utf-8") if isinstance(data, str) else data, durable)
    try:
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class _Steps:
    """Numbers the steps of one commit; the test hook (:data:`PAUSE_ENV`) stops before a chosen one."""

    def __init__(self):
        self.done = 0
        self.pause_at = os.environ.get(PAUSE_ENV, "").strip()

    def __call__(self, what: str) -> None:
        if self.pause_at in (str(self.done), what):
            sys.stderr.write(f"{PAUSE_ENV}: paused before step {self.done} ({what})\n")
            sys.stderr.flush()
            while True:  # until killed
                time.sleep(3600)
        self.done += 1


def _in_order(moves: list, stale: list):
    """A commit's renames and removals in their order: every file but the last, the stale files,
    then the last file (the manifest that lists the others)."""
    for index, move in enumerate(moves):
        if index == len(moves) - 1:
            yield from (("remove", item) for item in stale)
        yield "move", move
    if not moves:
        yield from (("remove", item) for item in stale)


# --------------------------------------------------------------------------- journal


def _write_journal(journal: Path, record: dict) -> None:
    write_atomic(journal, json.dumps(record, indent=1) + "\n")
    _fsync_dir(journal.parent)


def _read_journal(journal: Path) -> dict | None:
    try:
        if not journal.is_file() or journal.stat().st_size > _MAX_JOURNAL_BYTES:
            raise ValueError("not a journal")
        record = json.loads(journal.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("format") != _JOURNAL_FORMAT:
            raise ValueError("unknown journal format")
        return record
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("%s: unreadable commit journal (%s); removed", journal, exc)
        journal.unlink(missing_ok=True)
        return None


def _is_own_temp(tmp: Path, dest: Path) -> bool:
    return tmp.parent == dest.parent and _TEMP_RE.match(tmp.name) is not None


def _prune(path: Path, root: Path | None) -> None:
    folder = path.parent
    while root is not None and root in folder.parents and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def _remove_stale(path: Path, root: Path | None) -> None:
    try:
        path.unlink(missing_ok=True)
        _prune(path, root)
    except OSError as exc:
        raise describe_os_error(exc, path, "remove") from None


def _recover_files(journal: Path, record: dict) -> None:
    entries = [(Path(e["path"]), Path(e["temp"]), e.get("sha256")) for e in record.get("files", [])]
    stale = [(Path(e["path"]), Path(e["root"]) if e.get("root") else None) for e in record.get("remove", [])]
    incomplete = []
    for kind, item in _in_order(entries, stale):
        if kind == "remove":
            path, root = item
            if root is not None and root in path.parents:  # never outside the folder it was listed in
                _remove_stale(path, root)
            continue
        dest, tmp, digest = item
        if not _is_own_temp(tmp, dest):
            incomplete.append(str(dest))
        elif tmp.is_file():
            _replace(tmp, dest)
        elif not (dest.is_file() and digest and sha256_file(dest) == digest):
            incomplete.append(str(dest))
    for folder in {dest.parent for dest, _, _ in entries}:
        _fsync_dir(folder)
    if incomplete:
        log.warning(
            "%s: an interrupted commit could not be completed (%d file(s) were removed meanwhile, e.g. %s); "
            "run the command again to rewrite the outputs", journal, len(incomplete), incomplete[0],
        )
    else:
        log.warning("completed an interrupted commit of %d file(s) recorded in %s", len(entries), journal)
    journal.unlink(missing_ok=True)


def _recover_tree(journal: Path, record: dict) -> None:
    out, tmp, old = Path(record["path"]), Path(record["temp"]), Path(record["old"])
    if not (_is_own_temp(tmp, out) and _is_own_temp(old, out)):
        log.warning("%s: commit journal names foreign folders; removed", journal)
        journal.unlink(missing_ok=True)
        return
    if tmp.is_dir():
        if out.exists() and not old.exists():
            _replace(out, old)
        _replace(tmp, out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out.parent)
    log.warning("completed an interrupted replacement of %s recorded in %s", out, journal)
    journal.unlink(missing_ok=True)


def recover(journal: str | Path) -> bool:
    """Complete the commit recorded in ``journal``, if one was interrupted.

    The caller must hold the :class:`OutputLock` of the outputs involved
    (the lock does this when it is taken). Returns whether a journal was found.
    """
    journal = Path(journal)
    if not journal.exists():
        return False
    record = _read_journal(journal)
    if record is None:
        return True
    try:
        if record.get("kind") == "tree":
            _recover_tree(journal, record)
        else:
            _recover_files(journal, record)
    except (KeyError, TypeError, AttributeError) as exc:  # not what a commit writes: ours or not, useless
        log.warning("%s: malformed commit journal (%s: %s); removed", journal, type(exc).__name__, exc)
        journal.unlink(missing_ok=True)
    return True


def remove_stale_temps(folder: str | Path, *, recursive: bool = True, prefix: str = "") -> int:
    """Remove temporary files and folders of dead processes in ``folder``; return how many.

    Only names of this module's temporary pattern whose writing process
    (on this machine) has ended are touched. ``prefix`` limits the names
    (``".name."`` for the temporaries of one output).
    """
    folder = Path(folder)
    removed = 0
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(TEMP_SUFFIX):
                if not (entry.name.startswith(prefix) and _owner_gone(entry.name)):
                    continue  # another live process's work in progress
                try:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed += 1
                except OSError as exc:
                    log.warning("cannot remove the stale temporary %s (%s)", entry.path, exc.strerror)
                continue
            # outputs never live in hidden folders: do not walk a .git or .venv that shares the folder
            if recursive and not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
    if removed:
        log.info("removed %d temporary file(s) of interrupted runs under %s", removed, folder)
    return removed


# --------------------------------------------------------------------------- lock


@dataclass
class _Held:
    lock_path: Path
    fd: int


class OutputLock:
    """Exclusive right to write output targets, taken before the expensive work.

    Parameters
    ----------
    folders : folders written *into* (an assets folder, an analysis folder);
        created if absent; lock and journal live inside them.
    files : single files (a LaTeX section, a Markdown file); lock and journal
        live beside them.
    trees : folders replaced whole (the explorer site); lock and journal
        live beside them.
    wait : seconds to wait for another writer before giving up (0: fail at once).
    command : what this process is, recorded for the message a second writer gets.

    Use as a context manager. Taking it checks that every target can be
    written (creating folders, writing a probe file, free space), completes
    interrupted commits (:func:`recover`) and removes temporary files of
    killed runs; all failures are one-line :class:`OutputError`\\ s. On
    exit the lock files go, and folders it created that stayed empty too.
    """

    def __init__(self, folders: Iterable = (), files: Iterable = (), trees: Iterable = (), *,
                 wait: float = 0.0, command: str = ""):
        self.folders = _unique(folders)
        self.files = _unique(files)
        self.trees = _unique(trees)
        self.wait = float(wait)
        self.command = command or " ".join(Path(sys.argv[0]).name.split()[:1] + sys.argv[1:2])
        self._held: list[_Held] = []
        self._created: list[Path] = []

    # -- where things live
    def journal(self, target: str | Path) -> Path:
        """The commit journal of ``target`` (one of the locked targets)."""
        target = Path(os.path.abspath(target))
        if target in self.folders:
            return target / JOURNAL_NAME
        return target.parent / f".{target.name}{JOURNAL_NAME}"

    def _lock_path(self, target: Path) -> Path:
        if target in self.folders:
            return target / LOCK_NAME
        return target.parent / f".{target.name}{LOCK_NAME}"

    # -- taking and releasing
    def __enter__(self) -> "OutputLock":
        try:
            self._check_kinds()
            for target in sorted({*self.folders, *self.files, *self.trees}):
                _mkdirs(target if target in self.folders else target.parent, self._created)
                self._acquire(target)
            for target in self.folders:
                _probe(target)
            for target in sorted({*self.folders, *self.files, *self.trees}):
                recover(self.journal(target))
            self._clean()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for held in reversed(self._held):
            try:
                held.lock_path.unlink(missing_ok=True)  # still locked: nobody else holds this inode
            except OSError:
                pass
            os.close(held.fd)
        self._held.clear()
        for folder in reversed(self._created):
            try:
                folder.rmdir()  # only succeeds when empty
            except OSError:
                pass
        self._created.clear()

    def _check_kinds(self) -> None:
        for target in self.folders:
            if target.exists() and not target.is_dir():
                raise OutputError(f"{target} is a file, not a folder; choose another output folder")
        for target in self.files:
            if target.is_dir():
                raise OutputError(f"{target} is a folder, not a file; give the path of a file")
            if target.exists() and not target.is_file():  # a FIFO or device would block or never end
                raise OutputError(f"{target} is not a regular file; give the path of a file")
        for target in self.trees:
            if target.exists() and not target.is_dir():
                raise OutputError(f"{target} exists and is not a folder; choose another output folder")

    def _acquire(self, target: Path) -> None:
        lock_path = self._lock_path(target)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:  # the writer we waited for removed the folder it had created
                _mkdirs(lock_path.parent, self._created)
                continue
            except OSError as exc:
                raise describe_os_error(exc, target, "write to") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise OutputError(
                        f"{target} is being written by another mammography process ({holder}); "
                        "wait for it to finish or choose another output"
                    ) from None
                time.sleep(0.2)
                continue
            except OSError as exc:  # a file system without locks
                os.close(fd)
                raise describe_os_error(exc, target, "lock") from None
            # the holder before us may have removed the file we opened: retry on the new one
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                info = f"pid {os.getpid()}, {self.command}, since {datetime.now().strftime('%H:%M:%S')}"
                os.ftruncate(fd, 0)
                os.write(fd, info.encode("utf-8", "replace"))
            except OSError as exc:
                os.close(fd)
                raise describe_os_error(exc, target, "write to") from None
            self._held.append(_Held(lock_path, fd))
            return

    def _clean(self) -> None:
        for target in self.folders:
            remove_stale_temps(target, recursive=True)
        for target in (*self.files, *self.trees):
            remove_stale_temps(target.parent, recursive=False, prefix=f".{target.name[:_NAME_KEPT]}.")


def _unique(paths: Iterable) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        path = Path(os.path.abspath(path))
        if path not in out:
            out.append(path)
    return out


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 300, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return " ".join(text.split()) or "pid unknown"


def _probe(folder: Path) -> None:
    """Write and remove a small file in ``folder``; refuse a full disk before any work."""
    tmp = temp_path(folder / "probe")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
        os.unlink(tmp)
        stat = os.statvfs(folder)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise describe_os_error(exc, folder, "write to") from None
    if stat.f_bavail * stat.f_frsize < MIN_FREE_BYTES:
        raise OutputError(f"cannot write to {folder}: the disk is full; free some space or choose another output")


# --------------------------------------------------------------------------- batches


@dataclass
class FileBatch:
    """Files to be written together, all or none.

    Add outputs with :meth:`add` (nothing touches the disk), then
    :meth:`commit`. Files listed with :meth:`remove` (stale outputs of an
    earlier run) are deleted in the commit, just before the last file added
    (a manifest that lists the outputs) is moved into place.
    """

    files: dict[Path, bytes] = field(default_factory=dict)
    stale: list[tuple[Path, Path | None]] = field(default_factory=list)

    def add(self, path: str | Path, data: bytes | str) -> Path:
        """Stage ``data`` (bytes, or text written as UTF-8) for ``path``; returns the absolute path."""
        path = Path(os.path.abspath(path))
        if path in self.files:
            raise OutputError(f"two outputs would be written to the same file {path}")
        self.files[path] = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        return path

    def remove(self, path: str | Path, prune_up_to: str | Path | None = None) -> None:
        """Delete ``path`` on commit (ignored when it is also a new output).

        With ``prune_up_to``, folders between ``path`` and that folder (not
        included) that are left empty are removed too.
        """
        root = Path(os.path.abspath(prune_up_to)) if prune_up_to is not None else None
        self.stale.append((Path(os.path.abspath(path)), root))

    def sha256(self, path: str | Path) -> str:
        """Hash of the staged content of ``path``."""
        return sha256_bytes(self.files[Path(os.path.abspath(path))])

    def commit(self, journal: str | Path | None = None) -> list[Path]:
        """Write every staged file; return their paths in the order added.

        Parameters
        ----------
        journal : where the commit records its renames (from
            :meth:`OutputLock.journal`). Without one, a process killed
            between two renames can leave a mix of old and new files.

        Raises
        ------
        OutputError
            A file could not be written (full disk, no permission ...):
            the temporary files are removed and no destination has changed.
        """
        stale = [(p, r) for p, r in self.stale if p not in self.files]
        order = list(self.files)
        step = _Steps()
        temps: list[Path] = []
        try:
            for path in order:
                step(f"write a temporary file for {path.name}")
                temps.append(_write_temp(path, self.files[path]))
            if journal is not None:
                step("write the journal")
                _write_journal(Path(journal), {
                    "format": _JOURNAL_FORMAT,
                    "kind": "files",
                    "pid": os.getpid(),
                    "files": [{"path": str(p), "temp": str(t), "sha256": sha256_bytes(self.files[p])}
                              for p, t in zip(order, temps)],
                    "remove": [{"path": str(p), "root": None if r is None else str(r)} for p, r in stale],
                })
        except BaseException:
            for tmp in temps:
                tmp.unlink(missing_ok=True)
            raise
        for kind, (path, other) in _in_order(list(zip(order, temps)), stale):
            step(f"{kind} {path.name}")
            if kind == "remove":
                _remove_stale(path, other)
            else:
                _replace(other, path)
        for folder in {p.parent for p in order}:
            _fsync_dir(folder)
        if journal is not None:
            step("remove the journal")
            Path(journal).unlink(missing_ok=True)
        return order


def replace_tree(tmp: str | Path, out_dir: str | Path, journal: str | Path | None = None) -> Path:
    """Replace the folder ``out_dir`` by the complete folder ``tmp`` (made with :func:`temp_path` beside it).

    With a ``journal`` (from :meth:`OutputLock.journal`) an interruption is
    completed by the next :func:`recover`; the old folder is removed last.
    """
    tmp, out_dir = Path(tmp), Path(out_dir)
    old = temp_path(out_dir)
    step = _Steps()
    if journal is not None:
        step("write the journal")
        _write_journal(Path(journal), {"format": _JOURNAL_FORMAT, "kind": "tree", "pid": os.getpid(),
                                       "path": str(out_dir), "temp": str(tmp), "old": str(old)})
    if out_dir.exists():
        step(f"move the old {out_dir.name} aside")
        _replace(out_dir, old)
    step(f"move the new {out_dir.name} into place")
    _replace(tmp, out_dir)
    _fsync_dir(out_dir.parent)
    if old.exists():
        step(f"remove the old {out_dir.name}")
        shutil.rmtree(old, ignore_errors=True)
    if journal is not None:
        step("remove the journal")
        Path(journal).unlink(missing_ok=True)
    return out_dir
