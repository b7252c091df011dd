"""Writing report files safely: hashes, atomic writes and all-or-nothing batches.

A report pack writes many files into several folders (figures into the assets
folder, a LaTeX section, a Markdown file). The article must never see half of
a new pack next to half of an old one, and a failure must not leave
truncated files behind. :class:`FileBatch` collects every output in memory
first; :meth:`FileBatch.commit` then writes each one to a temporary file in
its destination folder (same file system, so the final rename is atomic) and
only when all of them are written renames them into place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mammography.errors import ConfigError

__all__ = ["sha256_bytes", "sha256_file", "atomic_write_bytes", "atomic_write_text", "FileBatch"]


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path``, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new temporary file next to ``path`` and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # mkstemp creates 0600 files; give the result the permissions a plain open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and :func:`os.replace`.

    Readers see either the old file or the complete new one, never a part.
    """
    path = Path(path)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text with ``\\n`` line endings."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@dataclass
class FileBatch:
    """Files to be written together, all or none.

    Add outputs with :meth:`add` (nothing touches the disk), then
    :meth:`commit`. Files listed with :meth:`remove` (stale outputs of an
    earlier pack) are deleted after the new files are in place.
    """

    files: dict[Path, bytes] = field(default_factory=dict)
    stale: list[tuple[Path, Path | None]] = field(default_factory=list)

    def add(self, path: str | Path, data: bytes | str) -> Path:
        """Stage ``data`` (bytes, or text written as UTF-8) for ``path``."""
        path = Path(os.path.abspath(path))
        if path in self.files:
            raise ConfigError(f"two report outputs would be written to the same file {path}")
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

    def commit(self) -> list[Path]:
        """Write every staged file; return their paths in the order added.

        Phase 1 writes all contents to temporary files beside their
        destinations; if any write fails (full disk, no permission) the
        temporary files are removed and no destination has changed. Phase 2
        renames them into place.
        """
        temps: list[tuple[Path, Path]] = []
        try:
            for path, data in self.files.items():
                temps.append((_write_temp(path, data), path))
        except BaseException:
            for tmp, _ in temps:
                tmp.unlink(missing_ok=True)
            raise
        for tmp, path in temps:
            os.replace(tmp, path)
        for path, root in self.stale:
            if path in self.files:
                continue
            path.unlink(missing_ok=True)
            folder = path.parent
            while root is not None and root in folder.parents and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
        return list(self.files)
