"""CSV files the tool writes, with cells spreadsheets do not evaluate.

Excel, LibreOffice and Google Sheets evaluate a cell that starts with ``=``,
``+``, ``-`` or ``@`` (or a tab or carriage return) as a formula when a CSV
is opened: a patient id ``=HYPERLINK("http://...")`` copied from a manifest
would become a live formula in ``val_predictions.csv`` (CSV injection).
:func:`csv_bytes` writes such *text* cells with a leading apostrophe (the
OWASP advice: spreadsheets then show the text as it is); numbers stay numbers
(a negative value is not text). :func:`unescape_cell` removes the apostrophe
again where the tool reads its own CSVs back, so a value survives the round
trip exactly.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["FORMULA_TRIGGERS", "csv_bytes", "escape_cell", "unescape_cell", "unescape_table", "write_csv"]

#: first characters that make a spreadsheet evaluate a cell
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def _needs_escape(text: str) -> bool:
    # an apostrophe run before a trigger is escaped too, so unescaping is exact
    return text[:1] in FORMULA_TRIGGERS or (text[:1] == "'" and text.lstrip("'")[:1] in FORMULA_TRIGGERS)


def escape_cell(value):
    """``value`` with an apostrophe in front when it is text a spreadsheet would evaluate."""
    if isinstance(value, str) and _needs_escape(value):
        return "'" + value
    return value


def unescape_cell(value):
    """Undo :func:`escape_cell` (other values are returned unchanged)."""
    if isinstance(value, str) and value[:1] == "'" and _needs_escape(value[1:]):
        return value[1:]
    return value


def _text_columns(table: pd.DataFrame) -> list:
    """Columns that may hold text (object dtype, or pandas' string dtypes)."""
    return [c for c in table.columns
            if pd.api.types.is_object_dtype(table[c].dtype) or pd.api.types.is_string_dtype(table[c].dtype)]


def unescape_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`unescape_cell` applied to the text columns of ``table`` (in place; returned)."""
    for column in _text_columns(table):
        table[column] = table[column].map(unescape_cell)
    return table


def csv_bytes(table: pd.DataFrame, **to_csv) -> bytes:
    """``table`` as UTF-8 CSV bytes without the index, text cells made spreadsheet-safe.

    ``to_csv`` is passed to :meth:`pandas.DataFrame.to_csv` (e.g. ``float_format``).
    """
    safe = table.copy()
    for column in _text_columns(safe):
        safe[column] = safe[column].map(escape_cell)
    safe.columns = [escape_cell(str(c)) for c in safe.columns]
    options = {"index": False, "lineterminator": "\n", **to_csv}
    return safe.to_csv(**options).encode("utf-8")


def write_csv(path: str | Path, table: pd.DataFrame, **to_csv) -> Path:
    """Write :func:`csv_bytes` of ``table`` to ``path`` atomically (see :func:`mammography.atomic.write_atomic`)."""
    from mammography.atomic import write_atomic

    return write_atomic(path, csv_bytes(table, **to_csv))
