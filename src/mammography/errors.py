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
