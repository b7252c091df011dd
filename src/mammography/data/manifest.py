"""Dataset manifests (CSV or Parquet) in any of the accepted forms, as one table.

Three forms are accepted (DESIGN section 2); column names match
case-insensitively:

1. the project's own manifest, written by ``mammography synth``:
   ``image_path, density_label, accession, patient_id, view, laterality``
   and optionally ``dense_fraction, roi_path, breast_mask_path, split,
   artifact_bbox``;
2. ``image_path`` plus one label column, the first present of
   :data:`LABEL_COLUMNS` (``density_label``, ``label``, ``y``,
   ``professional_label``, ``classification``) or of
   :data:`ZERO_BASED_LABEL_COLUMNS` (``density_label_0based``,
   ``label_0based``, ``y0``: 0..3); optional metadata columns are picked up
   under their usual DICOM names too (``AccessionNumber``, ``PatientID``,
   ``ViewPosition``, ``ImageLaterality``);
3. ``AccessionNumber, Classification[, ClassificationDate]`` with
   ``dicom_root`` holding ``<root>/<AccessionNumber>/*.dcm``: one row per
   DICOM file found; view, laterality and patient come from the file
   headers. An accession listed more than once keeps its latest
   ``ClassificationDate`` (else its last row), with a warning.

Rules
-----
* Labels are parsed by :func:`mammography.data.labels.parse_label`: 1..4,
  A..D, or 0..3 in a 0-based column (or with ``zero_based=True``). Class 5
  and unknown markers (empty, ``unknown``, ``?`` ...) are dropped and the
  count is logged as a warning; anything else is a bad row.
* A bad row (empty ``image_path``, a label that is no label, a missing image
  file) raises :class:`~mammography.errors.ManifestError` naming the CSV
  line (1 = header) and how many other rows are bad.
* Relative paths are resolved against the manifest's folder; the table holds
  absolute paths.
* Form 3 accessions without DICOM files are dropped with a warning (a
  classification sheet usually lists more exams than were exported); it is
  an error only when no image at all is left.
* ``patient_id`` is never empty: it falls back to the accession, then to the
  image file name (each image its own patient, logged).
* An image listed more than once (the same file, however its path is
  spelled) is kept once, so it can never sit on both sides of a split:
  copies with different density labels are all dropped (which label is
  right is unknown), copies under different patients keep the first row;
  both are logged as warnings with their lines.
* Cells the tool itself wrote spreadsheet-safe (``'=...``, see
  :mod:`mammography.csvfiles`) are read back as written before.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mammography.csvfiles import unescape_cell
from mammography.data.labels import parse_label
from mammography.errors import ManifestError, printable
from mammography.io.files import MAX_CSV_BYTES, require_regular_file

logger = logging.getLogger(__name__)

CANONICAL_COLUMNS = ("image_path", "density_label", "accession", "patient_id", "view", "laterality")
"""Columns every loaded manifest has, in this order."""

OPTIONAL_COLUMNS = ("roi_path", "breast_mask_path", "artifact_bbox", "dense_fraction", "split")
"""Columns kept (canonically named) when the CSV has them."""

PATH_COLUMNS = ("image_path", "roi_path", "breast_mask_path")

PARQUET_SUFFIXES = (".parquet", ".pq")
"""File name endings read as Parquet (anything else is read as CSV)."""

LABEL_COLUMNS = ("density_label", "label", "y", "professional_label", "classification")
"""1-based label columns, in order of preference."""

ZERO_BASED_LABEL_COLUMNS = ("density_label_0based", "label_0based", "y0")
"""Label columns holding 0..3 (used when none of :data:`LABEL_COLUMNS` is present)."""

_ALIASES = {
    "accession": ("accession", "accessionnumber", "accession_number"),
    "patient_id": ("patient_id", "patientid"),
    "view": ("view", "viewposition", "view_position"),
    "laterality": ("laterality", "imagelaterality", "image_laterality"),
}
_LATERALITY = {"L": "L", "R": "R", "LEFT": "L", "RIGHT": "R"}
_MAX_LINES_SHOWN = 5


def load_manifest(
    csv_path,
    dicom_root=None,
    *,
    zero_based: bool | None = None,
    check_files: bool = True,
) -> pd.DataFrame:
    """Load a manifest CSV of any accepted form into the canonical table.

    Parameters
    ----------
    csv_path : str or Path
        The CSV file, or a Parquet file (``.parquet``) with the same columns;
        its rows are numbered in messages as the lines of the same table
        written as CSV (header = line 1).
    dicom_root : str or Path, optional
        Folder with ``<AccessionNumber>/*.dcm``; needed (only) for the
        ``AccessionNumber, Classification`` form. Relative to the current
        directory.
    zero_based : bool, optional
        Force numeric labels to be read as 0..3 (True) or 1..4 (False).
        Default: 0..3 only in a column named in
        :data:`ZERO_BASED_LABEL_COLUMNS`.
    check_files : bool
        Require every ``image_path`` to exist (a missing one is a bad row).

    Returns
    -------
    pandas.DataFrame
        One row per image: :data:`CANONICAL_COLUMNS` (``image_path`` absolute
        str, ``density_label`` int 1..4, ``accession``/``view``/
        ``laterality`` str or None, ``patient_id`` str), then those of
        :data:`OPTIONAL_COLUMNS` present (absolute ``*_path``; ``None`` where
        empty; ``dense_fraction`` float), then the CSV's other columns
        unchanged. ``attrs["source"]`` is the CSV path, ``attrs["form"]`` one
        of ``"image_path"`` or ``"accession"``.

    Raises
    ------
    ManifestError
        Missing or unreadable CSV, unknown form, missing ``dicom_root``, or a
        bad row (with its line number).
    """
    path = Path(csv_path).expanduser()
    header, records = _read_table(path)
    columns = {name.strip().lower(): name for name in header}
    if "image_path" in columns:
        table = _from_image_paths(path, records, columns, zero_based, check_files)
        form = "image_path"
    elif {"accessionnumber", "classification"} <= columns.keys():
        table = _from_accessions(path, records, columns, dicom_root, zero_based)
        form = "accession"
    else:
        raise ManifestError(
            f"{path}: columns {list(header)} match no manifest form; expected 'image_path' "
            "with a label column (density_label, label, y or professional_label), or "
            "'AccessionNumber, Classification' with --dicom-root"
        )
    table.attrs["source"] = str(path)
    table.attrs["form"] = form
    return table


def parse_bbox(value) -> tuple[int, int, int, int] | None:
    """``"r0,c0,r1,c1"`` (half-open, original pixels) -> tuple; empty -> None.

    Raises
    ------
    ValueError
        For text that is not four integers with ``r0 < r1`` and ``c0 < c1``.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    if not text:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        r0, c0, r1, c1 = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"box {text!r} is not 'r0,c0,r1,c1'") from None
    if not (0 <= r0 < r1 and 0 <= c0 < c1):
        raise ValueError(f"box {text!r} is empty or negative")
    return r0, c0, r1, c1


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and ``(line number, row)`` pairs of a CSV or Parquet manifest (by suffix)."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(path)
    return _read_csv(path)


def _parquet_cell(value) -> str:
    """A Parquet value as the CSV text it stands for (empty for null/NaN, ``3`` for 3.0)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _read_parquet(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and rows of a Parquet manifest, numbered like the lines of the same table as CSV
    (header = line 1), so messages name the same row either way."""
    import pyarrow.parquet as pq

    st = require_regular_file(path, "manifest", ManifestError, "pass the path of a manifest CSV or Parquet file")
    if st.st_size > MAX_CSV_BYTES:
        raise ManifestError(f"manifest {printable(path)} is {st.st_size / 1e6:.0f} MB, more than any manifest; "
                            "check that it is the right file")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error kinds for a damaged file
        raise ManifestError(f"manifest {printable(path)} is not a readable Parquet file ({exc})") from None
    header = [str(name).strip() for name in table.column_names]
    if not header:
        raise ManifestError(f"manifest {path} has no columns")
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    records = []
    for k, values in enumerate(zip(*columns)):
        cells = [unescape_cell(_parquet_cell(v)) for v in values]
        if any(cell.strip() for cell in cells):
            records.append((k + 2, dict(zip(header, cells))))
    return header, records


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and ``(line number, row)`` pairs; blank lines are skipped."""
    st = require_regular_file(path, "manifest", ManifestError, "pass the path of a manifest CSV")
    if st.st_size > MAX_CSV_BYTES:
        raise ManifestError(f"manifest {printable(path)} is {st.st_size / 1e6:.0f} MB, more than any manifest; "
                            "check that it is the right file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            first = fh.readline()
            fh.seek(0)
            delimiter = _delimiter(first)
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise ManifestError(f"manifest {path} is empty; it needs a header line")
            header = [h.strip() for h in header]
            records = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) > len(header):
                    raise ManifestError(
                        f"{path}, line {reader.line_num}: {len(row)} fields but the header has "
                        f"{len(header)}; quote values that contain '{delimiter}'"
                    )
                row = [unescape_cell(cell) for cell in row] + [""] * (len(header) - len(row))
                records.append((reader.line_num, dict(zip(header, row))))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {path} is not UTF-8 text ({exc.reason}); save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise ManifestError(f"manifest {path} is not valid CSV: {exc}") from None
    return header, records


def _delimiter(first_line: str) -> str:
    """Comma, unless the header plainly uses semicolons or tabs."""
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    return max(counts, key=lambda d: (counts[d], d == ","))


def _column(columns: dict[str, str], names) -> str | None:
    for name in names:
        if name in columns:
            return columns[name]
    return None


class _BadRows:
    """Collects bad rows; raises one ManifestError that names the first."""

    def __init__(self, path: Path):
        self.path = path
        self.problems: list[tuple[int, str]] = []

    def add(self, line: int, problem: str) -> None:
        self.problems.append((line, problem))

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        line, problem = self.problems[0]
        more = ""
        if len(self.problems) > 1:
            others = ", ".join(str(n) for n, _ in self.problems[1 : 1 + _MAX_LINES_SHOWN])
            tail = ", ..." if len(self.problems) > 1 + _MAX_LINES_SHOWN else ""
            count = len(self.problems) - 1
            more = f" ({count} more bad row{'s' if count > 1 else ''}: line{'s' if count > 1 else ''} {others}{tail})"
        raise ManifestError(f"{self.path}, line {line}: {problem}{more}")


def _label_column(
    path: Path, columns: dict[str, str], zero_based: bool | None, extra: tuple[str, ...] = ()
) -> tuple[str, bool]:
    name = _column(columns, LABEL_COLUMNS + extra)
    column_zero_based = False
    if name is None:
        name = _column(columns, ZERO_BASED_LABEL_COLUMNS)
        column_zero_based = name is not None
    if name is None:
        raise ManifestError(
            f"{path}: no label column; add one of {', '.join(LABEL_COLUMNS)} (1..4 or A..D) "
            f"or {', '.join(ZERO_BASED_LABEL_COLUMNS)} (0..3)"
        )
    return name, column_zero_based if zero_based is None else bool(zero_based)


def _parse(row: dict, name: str, zero_based: bool, line: int, bad: _BadRows) -> tuple[bool, int | None]:
    """``(ok, label)``: ok False for a bad label (recorded in `bad`)."""
    try:
        return True, parse_label(row.get(name, ""), zero_based=zero_based)
    except ValueError as exc:
        bad.add(line, f"{name} = {row.get(name)!r}: {exc}")
        return False, None


def _warn_dropped(path: Path, lines: list[int], total: int, why: str) -> None:
    if not lines:
        return
    shown = ", ".join(str(n) for n in lines[:_MAX_LINES_SHOWN])
    tail = ", ..." if len(lines) > _MAX_LINES_SHOWN else ""
    logger.warning("%s: dropped %d of %d rows %s (lines %s%s)", path, len(lines), total, why, shown, tail)


def _resolve(base: Path, value: str) -> str | None:
    value = (value or "").strip()
    if not value:
        return None
    if "\x00" in value:  # no file name holds one; os calls would raise ValueError
        raise ManifestError(f"{base}: a path in the manifest contains a NUL byte ({printable(value)}); fix the manifest")
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    return os.path.abspath(candidate)


def _text(value) -> str | None:
    value = "" if value is None else str(value).strip()
    return value or None


def _laterality(value) -> str | None:
    text = _text(value)
    return None if text is None else _LATERALITY.get(text.upper(), text.upper())


def _view(value) -> str | None:
    text = _text(value)
    return None if text is None else text.upper()


# ---------------------------------------------------------------------------
# forms 1 and 2: one row per image_path
# ---------------------------------------------------------------------------


def _from_image_paths(
    path: Path, records, columns: dict[str, str], zero_based: bool | None, check_files: bool
) -> pd.DataFrame:
    base = path.parent.resolve()
    label_name, label_zero_based = _label_column(path, columns, zero_based)
    bad = _BadRows(path)
    image_name = columns["image_path"]
    meta = {key: _column(columns, names) for key, names in _ALIASES.items()}
    optional = {key: columns.get(key) for key in OPTIONAL_COLUMNS}
    consumed = {image_name, label_name, *filter(None, meta.values()), *filter(None, optional.values())}

    rows, dropped = [], []
    for line, row in records:
        ok, label = _parse(row, label_name, label_zero_based, line, bad)
        image = _resolve(base, row.get(image_name, ""))
        if image is None:
            bad.add(line, "image_path is empty")
            continue
        if not ok:
            continue
        if label is None:  # dropped rows need no image on disk
            dropped.append(line)
            continue
        if check_files and not os.path.isfile(image):
            bad.add(line, f"image {image} does not exist")
            continue
        record = {
            "_line": line,
            "image_path": image,
            "density_label": label,
            **{key: row.get(name) if name else None for key, name in meta.items()},
        }
        for key, name in optional.items():
            if name is not None:
                record[key] = _optional_value(key, row.get(name), base, line, bad)
        record.update({name: row[name] for name in row if name not in consumed})
        rows.append(record)
    bad.raise_if_any()
    _warn_dropped(path, dropped, len(records), "with class 5 or an unknown density label")
    return _finish(path, rows, [key for key, name in optional.items() if name is not None])


def _optional_value(key: str, value, base: Path, line: int, bad: _BadRows):
    if key in PATH_COLUMNS:
        return _resolve(base, value)
    if key == "dense_fraction":
        text = _text(value)
        if text is None:
            return float("nan")
        try:
            return float(text)
        except ValueError:
            bad.add(line, f"dense_fraction {text!r} is not a number")
            return float("nan")
    if key == "artifact_bbox":
        try:
            parse_bbox(value)
        except ValueError as exc:
            bad.add(line, f"artifact_bbox: {exc}")
        return _text(value)
    return _text(value)


# ---------------------------------------------------------------------------
# form 3: AccessionNumber, Classification + DICOM folders
# ---------------------------------------------------------------------------


def _from_accessions(
    path: Path, records, columns: dict[str, str], dicom_root, zero_based: bool | None
) -> pd.DataFrame:
    if dicom_root is None:
        raise ManifestError(
            f"{path} lists AccessionNumber/Classification: pass --dicom-root, the folder "
            "holding <AccessionNumber>/*.dcm"
        )
    root = Path(dicom_root).expanduser()
    if not root.is_dir():
        raise ManifestError(f"DICOM root {root} is not a folder (needed by {path})")
    accession_name, label_name = columns["accessionnumber"], columns["classification"]
    date_name = columns.get("classificationdate")
    bad = _BadRows(path)
    labels = []
    for line, row in records:
        labels.append(_parse(row, label_name, bool(zero_based), line, bad)[1])
        if not _text(row.get(accession_name)):
            bad.add(line, "AccessionNumber is empty")
    bad.raise_if_any()

    latest = _latest_per_accession(path, records, labels, accession_name, date_name)
    dropped_label, missing, rows = [], [], []
    consumed = {accession_name, label_name}
    for accession, (line, row, label) in latest.items():
        if label is None:
            dropped_label.append(line)
            continue
        files = _dicom_files(root / accession)
        if not files:
            missing.append(line)
            continue
        extras = {name: row[name] for name in row if name not in consumed}
        for file in files:
            header = _header(file)
            rows.append(
                {
                    "image_path": os.path.abspath(file),
                    "density_label": label,
                    "accession": accession,
                    "patient_id": header.get("patient_id"),
                    "view": header.get("view"),
                    "laterality": header.get("laterality"),
                    **extras,
                }
            )
    _warn_dropped(path, sorted(dropped_label), len(records), "with class 5 or an unknown density label")
    _warn_dropped(path, sorted(missing), len(records), f"whose accession has no .dcm file under {root}")
    if not rows:
        raise ManifestError(
            f"{path}: no DICOM file found for any accession under {root} "
            "(expected <root>/<AccessionNumber>/*.dcm)"
        )
    return _finish(path, rows, [])


def _latest_per_accession(path, records, labels, accession_name, date_name) -> dict:
    """Accession -> (line, row, label) of its latest classification."""
    latest: dict[str, tuple[int, dict, int | None]] = {}
    stamps: dict[str, pd.Timestamp] = {}
    repeated = set()
    for (line, row), label in zip(records, labels):
        accession = _text(row.get(accession_name))
        stamp = pd.to_datetime(_text(row.get(date_name)) if date_name else None, errors="coerce")
        if accession in latest:
            repeated.add(accession)
            previous = stamps[accession]
            if pd.notna(previous) and (pd.isna(stamp) or stamp < previous):
                continue  # the earlier classification is older: keep the later one
        latest[accession] = (line, row, label)
        stamps[accession] = stamp
    if repeated:
        logger.warning(
            "%s: %d accessions are listed more than once; kept the latest %s",
            path,
            len(repeated),
            "ClassificationDate" if date_name else "row",
        )
    return latest


def _dicom_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")


def _header(file: Path) -> dict:
    """Patient, view and laterality from a DICOM header (pixels not read)."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            file,
            stop_before_pixels=True,
            specific_tags=["PatientID", "ViewPosition", "ImageLaterality", "Laterality"],
        )
    except Exception as exc:  # unreadable header: the image reader reports it later
        logger.warning("%s: DICOM header unreadable (%s); view/laterality unknown", file, exc)
        return {}
    return {
        "patient_id": _text(ds.get("PatientID")),
        "view": _view(ds.get("ViewPosition")),
        "laterality": _laterality(ds.get("ImageLaterality") or ds.get("Laterality")),
    }


# ---------------------------------------------------------------------------
# the canonical table
# ---------------------------------------------------------------------------


def _finish(path: Path, rows: list[dict], optional: list[str]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(
            {name: pd.Series(dtype="int64" if name == "density_label" else object)
             for name in (*CANONICAL_COLUMNS, *optional)}
        )
    table = pd.DataFrame(rows)
    for key in ("accession", "patient_id", "view", "laterality"):
        table[key] = table[key].map(_text) if key in table else None
    table["view"] = table["view"].map(_view)
    table["laterality"] = table["laterality"].map(_laterality)
    _fill_patient_ids(path, table)
    table = _deduplicate(path, table).drop(columns="_line", errors="ignore")
    table["density_label"] = table["density_label"].astype("int64")
    if "dense_fraction" in table:
        table["dense_fraction"] = table["dense_fraction"].astype(float)
    ordered = [*CANONICAL_COLUMNS, *[c for c in OPTIONAL_COLUMNS if c in optional]]
    table = table[ordered + [c for c in table.columns if c not in ordered]]
    for name in table.columns:
        if name not in ("density_label", "dense_fraction"):
            # one missing-value marker for text: None (not NaN, not "")
            column = table[name].astype(object)
            table[name] = column.where(column.notna() & (column != ""), None)
    return table.reset_index(drop=True)


def _lines(table: pd.DataFrame, index) -> str:
    if "_line" not in table:
        return ""
    shown = [str(v) for v in table.loc[index, "_line"].tolist()[:_MAX_LINES_SHOWN]]
    return f" (lines {', '.join(shown)}{', ...' if len(index) > _MAX_LINES_SHOWN else ''})"


def _deduplicate(path: Path, table: pd.DataFrame) -> pd.DataFrame:
    """Keep each image once (rules in the module docstring)."""
    key = table["image_path"].map(os.path.realpath)
    repeated = key.duplicated(keep=False)
    if not repeated.any():
        return table
    drop: list = []
    label_conflicts, patient_conflicts, repeats = [], [], 0
    for _, index in table.index[repeated].groupby(key[repeated]).items():
        rows = table.loc[index]
        if rows["density_label"].nunique() > 1:
            drop.extend(index)
            label_conflicts.extend(index)
            continue
        if rows["patient_id"].nunique() > 1:
            patient_conflicts.extend(index)
        repeats += len(index) - 1
        drop.extend(index[1:])
    if label_conflicts:
        logger.warning("%s: %d rows list the same image with different density labels; dropped all of them%s: "
                       "fix the labels in the manifest", path, len(label_conflicts), _lines(table, label_conflicts))
    if patient_conflicts:
        logger.warning("%s: %d rows list the same image under different patients; kept the first of each, so no "
                       "image is on both sides of a split%s", path, len(patient_conflicts),
                       _lines(table, patient_conflicts))
    if repeats:
        logger.info("%s: %d repeated rows of images listed before were left out", path, repeats)
    return table.drop(index=drop)


def _fill_patient_ids(path: Path, table: pd.DataFrame) -> None:
    missing = table["patient_id"].isna()
    if not missing.any():
        return
    from_accession = missing & table["accession"].notna()
    table.loc[from_accession, "patient_id"] = table.loc[from_accession, "accession"]
    from_file = missing & ~from_accession
    table.loc[from_file, "patient_id"] = table.loc[from_file, "image_path"].map(lambda p: Path(p).stem)
    logger.info(
        "%s: %d rows have no patient_id; used the accession (%d) or the file name (%d)",
        path,
        int(missing.sum()),
        int(from_accession.sum()),
        int(from_file.sum()),
    )
