"""Exceptions for errors a user can cause.

Every error that a user can fix (a missing file, a bad DICOM, a checkpoint
that does not fit, an unknown label, a bad flag) is a :class:`MammographyError`.
The CLI prints its message as one line and exits with status 2; library
callers catch it like any exception. Messages name the file involved and say
what to do.
"""

from __future__ import annotations


class MammographyError(Exception):
    """Base class for errors caused by the user's inputs."""


class ImageReadError(MammographyError):
    """A mammogram (DICOM, PNG, JPEG, TIFF) could not be read."""


class ManifestError(MammographyError):
    """A dataset manifest CSV is missing, malformed or has bad rows."""


class CheckpointError(MammographyError):
    """A checkpoint is missing, unsafe to load, or does not fit the model."""


class RunError(MammographyError):
    """A run directory is missing files or has inconsistent contents."""


class ConfigError(MammographyError):
    """A parameter or flag value is invalid."""


class OutputError(MammographyError):
    """An output cannot be written: full disk, read-only or unwritable folder, path below a file,
    or another process writing the same output."""


def printable(text: object) -> str:
    """``text`` as one inert line: control and format characters escaped.

    File names, checkpoint keys and DICOM values come from other people's
    files; printed raw, a newline would split an error message and an escape
    sequence (``\\x1b[...``) or a bidirectional override would act on the
    user's terminal. They are shown as ``\\n``, ``\\x1b``, ``\\u202e`` ...
    """
    import unicodedata

    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            code = ord(ch)
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or
                       (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"))
        else:
            out.append(ch)
    return "".join(out)
