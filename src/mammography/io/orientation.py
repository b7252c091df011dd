"""Laterality and view of a mammogram, and where each came from.

Clinical archives hold laterality and view in the DICOM header
(ImageLaterality, ViewPosition); digitised-film archives and their PNG/JPEG
exports often hold them only in a series ``Laterality``, in a
``PatientOrientation`` misused for the view ("CC", "MLO"), in a PatientID
like ``Mass-Test_P_00012_RIGHT_MLO`` or in the file and folder names. The
readers record the first of those they find (``Mammogram.laterality`` and
``.laterality_source``); :func:`resolve_laterality` and :func:`resolve_view`
put a caller's hint (the manifest's column) first and fall back on the image
itself, so every image gets a value and its source:

* laterality: manifest, ImageLaterality, Laterality, PatientID, file name,
  folder name, image (the chest wall is on the left of a left breast as
  displayed: :func:`~mammography.io.mask.chest_wall_side`);
* view: manifest, ViewPosition, PatientOrientation, PatientID, file name,
  folder name, image (an MLO view shows the pectoral muscle in the
  chest-wall corner at the top: :func:`~mammography.io.mask.pectoral_mask`;
  otherwise CC).

Tokens are the parts of a text between non-alphanumeric characters:
``LEFT``/``RIGHT`` alone, ``L``/``R`` only next to a view token (``L_CC``,
``R-MLO``), or joined to one (``LCC``, ``RMLO``); views ``CC``, ``MLO``,
``ML``, ``LM``. Contradicting tokens give nothing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from mammography.io.mask import pectoral_mask, segment_breast

__all__ = [
    "LATERALITY_SOURCES",
    "VIEW_SOURCES",
    "VIEWS",
    "Resolved",
    "normalise_laterality",
    "normalise_view",
    "orientation_from_text",
    "orientation_from_path",
    "resolve_laterality",
    "resolve_view",
    "with_orientation",
]

#: where a laterality may come from, in the order they are tried
LATERALITY_SOURCES = ("manifest", "ImageLaterality", "Laterality", "PatientID", "file name", "folder name", "image")
#: where a view may come from, in the order they are tried
VIEW_SOURCES = ("manifest", "ViewPosition", "PatientOrientation", "PatientID", "file name", "folder name", "image")
#: views recognised (lateral views keep their own names; every other one is unknown)
VIEWS = ("CC", "MLO", "ML", "LM")

_LATERALITY_WORDS = {"L": "L", "R": "R", "LEFT": "L", "RIGHT": "R"}
_JOINED = re.compile(r"^(L|R)(CC|MLO|ML|LM)$")
_SPLIT = re.compile(r"[^A-Z0-9]+")
#: folders above the file whose names are searched for tokens
_FOLDER_LEVELS = 3


@dataclass(frozen=True)
class Resolved:
    """A laterality or view and where it came from (both None when unknown)."""

    value: str | None
    source: str | None


def normalise_laterality(value) -> str | None:
    """``'L'``/``'R'`` from L, R, LEFT, RIGHT (any case, spaces); None for anything else (B, U, empty)."""
    if value is None:
        return None
    text = str(value).strip().upper()
    return _LATERALITY_WORDS.get(text) if text and text not in ("NAN", "NONE") else None


def normalise_view(value) -> str | None:
    """One of :data:`VIEWS` from a view text (``"mlo"``, ``" CC "``); None for anything else."""
    if value is None:
        return None
    text = str(value).strip().upper()
    return text if text in VIEWS else None


def orientation_from_text(text) -> tuple[str | None, str | None]:
    """(laterality, view) named by the tokens of ``text`` (module docstring); None where absent or contradictory."""
    if text is None:
        return None, None
    tokens = [t for t in _SPLIT.split(str(text).upper()) if t]
    lateralities, views = set(), set()
    for i, token in enumerate(tokens):
        joined = _JOINED.match(token)
        if joined:
            lateralities.add(joined.group(1))
            views.add(joined.group(2))
        elif token in VIEWS:
            views.add(token)
        elif token in ("LEFT", "RIGHT"):
            lateralities.add(_LATERALITY_WORDS[token])
        elif token in ("L", "R"):
            neighbours = tokens[max(0, i - 1) : i] + tokens[i + 1 : i + 2]
            if any(n in VIEWS for n in neighbours):
                lateralities.add(token)
    laterality = lateralities.pop() if len(lateralities) == 1 else None
    view = views.pop() if len(views) == 1 else None
    return laterality, view


def orientation_from_path(path) -> tuple[Resolved, Resolved]:
    """Laterality and view from a file's name, else its folders' names (nearest first)."""
    path = Path(path)
    laterality = view = Resolved(None, None)
    for name, source in [(path.stem, "file name")] + [
        (parent.name, "folder name") for parent in list(path.parents)[:_FOLDER_LEVELS]
    ]:
        lat, vw = orientation_from_text(name)
        if laterality.value is None and lat is not None:
            laterality = Resolved(lat, source)
        if view.value is None and vw is not None:
            view = Resolved(vw, source)
    return laterality, view


def resolve_laterality(m, hint=None, *, sources=LATERALITY_SOURCES) -> Resolved:
    """The laterality of mammogram ``m`` and its source.

    Parameters
    ----------
    m : :class:`~mammography.io.Mammogram` as read (``laterality`` and
        ``laterality_source`` hold what the file says).
    hint : the manifest's value for this image (L/R/LEFT/RIGHT; anything
        else, empty or None is no hint).
    sources : the sources allowed, a subset of :data:`LATERALITY_SOURCES`
        (to reproduce an older rule, e.g. ``("ImageLaterality",
        "Laterality")``).

    Returns
    -------
    Resolved
        ``source`` is one of :data:`LATERALITY_SOURCES`; ``Resolved(None,
        None)`` when no allowed source says it (e.g. an empty image).
    """
    return _resolve(normalise_laterality(hint), m.laterality, m.laterality_source, sources, lambda: _image_laterality(m))


def resolve_view(m, hint=None, *, sources=VIEW_SOURCES) -> Resolved:
    """The view of mammogram ``m`` and its source (see :func:`resolve_laterality`).

    From the image: MLO when a pectoral muscle is found in the chest-wall
    corner at the top of the breast, else CC (a guess; its source says so).
    """
    return _resolve(normalise_view(hint), m.view, m.view_source, sources, lambda: _image_view(m))


def _resolve(hint: str | None, value: str | None, source: str | None, sources, from_image) -> Resolved:
    """The manifest's hint, else what the file says, else the image (each only when allowed)."""
    if hint is not None and "manifest" in sources:
        return Resolved(hint, "manifest")
    if value is not None and source in sources:
        return Resolved(value, source)
    guess = from_image() if "image" in sources else None
    return Resolved(guess, "image") if guess is not None else Resolved(None, None)


def _image_laterality(m) -> str | None:
    """'L' when the chest wall (the border the breast rests on) is on the left, 'R' on the right."""
    side = segment_breast(m.pixels).chest_wall
    return None if side is None else ("L" if side == "left" else "R")


def _image_view(m) -> str | None:
    """'MLO' when a pectoral muscle shows in the chest-wall corner at the top of the breast, else 'CC'."""
    segmentation = segment_breast(m.pixels)
    if not segmentation.breast.any():
        return None
    muscle = pectoral_mask(m.pixels, segmentation.breast, chest_wall=segmentation.chest_wall)
    return "MLO" if muscle.any() else "CC"


def with_orientation(m, laterality_hint=None, view_hint=None, *, sources=None, laterality_sources=None,
                     view_sources=None):
    """``m`` with ``laterality``/``view`` and their sources resolved (a new :class:`Mammogram`).

    ``sources`` restricts both chains, ``laterality_sources`` / ``view_sources``
    one each (default: all sources); the image is only segmented when
    nothing else says the laterality or view.
    """
    lat_sources = tuple(laterality_sources or sources or LATERALITY_SOURCES)
    view_sources = tuple(view_sources or sources or VIEW_SOURCES)
    laterality = resolve_laterality(m, laterality_hint, sources=lat_sources)
    view = resolve_view(m, view_hint, sources=view_sources)
    return dataclasses.replace(
        m,
        laterality=laterality.value,
        laterality_source=laterality.source,
        view=view.value,
        view_source=view.source,
    )
