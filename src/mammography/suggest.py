"""Help for mistyped names: "did you mean ...?" and what a wrong path is instead of a run.

Used by the command line (flags, sub-commands, choices) and by
:func:`mammography.runs.resolve_runs` (run names), so every typo gets the
same kind of hint.
"""

from __future__ import annotations

import difflib
from pathlib import Path

__all__ = ["close_matches", "did_you_mean", "run_not_found_message"]

#: files a run directory holds (what a user may pass by mistake instead of its folder)
RUN_FILE_NAMES = ("best_model.pth", "best_model.pt", "checkpoint.pt", "summary.json", "val_predictions.csv",
                  "train_history.csv", "cv_summary.json")


def close_matches(word: str, candidates, n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` of ``candidates`` that look like ``word`` (difflib's ratio ≥ ``cutoff``), best first."""
    return difflib.get_close_matches(str(word), sorted({str(c) for c in candidates}), n=n, cutoff=cutoff)


def did_you_mean(word: str, candidates, n: int = 3, cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` (or ``"'x' or 'y'"``), or ``""`` when nothing is close."""
    found = close_matches(word, candidates, n=n, cutoff=cutoff)
    if not found:
        return ""
    return "; did you mean " + " or ".join(repr(f) for f in found) + "?"


def _folders(base: Path) -> list[str]:
    try:
        return [p.name for p in base.iterdir() if p.is_dir()]
    except OSError:
        return []


def run_not_found_message(text: str, candidates: list[Path], bases: list[Path], writer: str) -> str:
    """One line for a ``--run`` value that names no run directory.

    Parameters
    ----------
    text : the value as given.
    candidates : the paths it was looked up as, in order.
    bases : the outputs folders relative names are looked up in.
    writer : the command that writes runs (for the hint).
    """
    for path in candidates:
        if path.is_file():
            parent = path.parent
            what = "a file in a run directory" if path.name in RUN_FILE_NAMES else "a file"
            return (f"--run {text!r} is {what}, not a run directory: pass the folder that holds best_model.pth, "
                    f"summary.json and val_predictions.csv, e.g. --run {str(parent)!r}")
    looked = ", ".join(str(c) for c in candidates)
    names = [name for base in bases for name in _folders(base)]
    parent = Path(text).parent
    if str(parent) not in ("", "."):
        names += [str(parent / name) for name in _folders(parent)]
    return (f"run {text!r} not found (looked in: {looked}); train one with {writer} or pass the run directory"
            + did_you_mean(text, names))
