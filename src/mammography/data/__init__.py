"""Data sets: manifests, density labels, splits and the torch Dataset.

Importing this package is light (pandas, no torch): the torch Dataset lives
in :mod:`mammography.data.dataset` and is imported from there.
"""

from mammography.data.labels import (
    CLASS_LETTERS,
    CLASS_NAMES,
    class_letter,
    class_title,
    parse_label,
)
from mammography.data.manifest import (
    CANONICAL_COLUMNS,
    OPTIONAL_COLUMNS,
    load_manifest,
    parse_bbox,
)

__all__ = [
    "CANONICAL_COLUMNS",
    "CLASS_LETTERS",
    "CLASS_NAMES",
    "OPTIONAL_COLUMNS",
    "class_letter",
    "class_title",
    "load_manifest",
    "parse_bbox",
    "parse_label",
]
