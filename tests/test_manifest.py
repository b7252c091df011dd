"""Manifest loading (three CSV forms) and density label parsing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from mammography.data import (
    CANONICAL_COLUMNS,
    CLASS_LETTERS,
    CLASS_NAMES,
    class_title,
    load_manifest,
    parse_bbox,
    parse_label,
)
from mammography.errors import ManifestError
from mammography.synth import generate_dataset


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """Eight real phantom DICOM files (2 patients) and their manifest."""
    out = tmp_path_factory.mktemp("phantoms")
    return generate_dataset(out, n=8, seed=4, size=(96, 78), class_mix=(0, 1, 1, 0), shortcut=3)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def images(tmp_path) -> list[str]:
    """Four image files (any content: form 2 only checks they exist)."""
    folder = tmp_path / "img"
    folder.mkdir()
    names = [f"img/{i}.png" for i in range(4)]
    for name in names:
        (tmp_path / name).write_bytes(b"png")
    return names


# ---------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, zero_based, expected",
    [
        (1, False, 1), ("4", False, 4), (3.0, False, 3), ("2.0", False, 2),
        ("A", False, 1), ("b", False, 2), (" c ", False, 3), ("D", True, 4),
        ("BI-RADS C", False, 3), ("density d", False, 4),
        (0, True, 1), ("3", True, 4),
        (5, False, None), ("4", True, None), ("", False, None), (None, False, None),
        (float("nan"), False, None), ("unknown", False, None), ("N/A", False, None), ("?", False, None),
    ],
)
def test_parse_label(value, zero_based, expected):
    assert parse_label(value, zero_based=zero_based) == expected


@pytest.mark.parametrize("value", ["7", "-1", "2.5", "dense", "AB", True])
def test_parse_label_rejects_garbage(value):
    with pytest.raises(ValueError):
        parse_label(value)


def test_zero_in_a_one_based_column_points_to_the_0based_column_name():
    with pytest.raises(ValueError, match="label_0based"):
        parse_label("0")


def test_class_names_and_titles():
    assert CLASS_LETTERS == ("A", "B", "C", "D")
    assert CLASS_NAMES[0] == "almost entirely fatty" and CLASS_NAMES[3] == "extremely dense"
    assert class_title(1) == "1 (A) almost entirely fatty"
    assert class_title(3) == "3 (C) heterogeneously dense"
    with pytest.raises(ValueError):
        class_title(5)


def test_parse_bbox():
    assert parse_bbox("1,2,30,40") == (1, 2, 30, 40)
    assert parse_bbox("") is None and parse_bbox(None) is None and parse_bbox(float("nan")) is None
    for bad in ("1,2,3", "5,5,5,9", "a,b,c,d"):
        with pytest.raises(ValueError):
            parse_bbox(bad)


# ---------------------------------------------------------------------------
# form 1: the project's own manifest
# ---------------------------------------------------------------------------


def test_own_manifest_loads_with_absolute_paths(phantoms):
    table = load_manifest(phantoms)
    raw = pd.read_csv(phantoms, keep_default_na=False)
    assert list(table.columns[:6]) == list(CANONICAL_COLUMNS)
    assert {"roi_path", "breast_mask_path", "artifact_bbox", "dense_fraction", "split"} <= set(table.columns)
    assert len(table) == len(raw) == 8
    assert table.density_label.dtype == "int64" and set(table.density_label) == {2, 3}
    for column in ("image_path", "roi_path", "breast_mask_path"):
        assert all(os.path.isabs(p) and os.path.isfile(p) for p in table[column])
    assert table.image_path.tolist() == [str(phantoms.parent / p) for p in raw.image_path]
    assert table.dense_fraction.dtype == float
    assert table.artifact_bbox.notna().tolist() == (raw.artifact_bbox != "").tolist()
    assert table.attrs["form"] == "image_path"


def test_loading_from_another_working_directory(phantoms, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(phantoms, tmp_path)
    table = load_manifest(relative)
    assert all(os.path.isfile(p) for p in table.image_path)


# ---------------------------------------------------------------------------
# form 2: image_path + a label column
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "column, values, expected",
    [
        ("density_label", ["1", "2", "3", "4"], [1, 2, 3, 4]),
        ("label", ["a", "B", "c", "D"], [1, 2, 3, 4]),
        ("y", ["4", "3", "2", "1"], [4, 3, 2, 1]),
        ("professional_label", ["C", "C", "2", "1"], [3, 3, 2, 1]),
        ("label_0based", ["0", "1", "2", "3"], [1, 2, 3, 4]),
        ("y0", ["3", "2", "1", "0"], [4, 3, 2, 1]),
        ("Label", ["1", "2", "3", "4"], [1, 2, 3, 4]),  # names match case-insensitively
    ],
)
def test_image_path_with_a_label_column(tmp_path, images, column, values, expected):
    lines = [f"image_path,{column}"] + [f"{p},{v}" for p, v in zip(images, values)]
    table = load_manifest(_write(tmp_path / "m.csv", "\n".join(lines) + "\n"))
    assert table.density_label.tolist() == expected
    assert table.image_path.tolist() == [str(tmp_path / p) for p in images]
    assert list(table.columns[:6]) == list(CANONICAL_COLUMNS)


def test_zero_based_argument_overrides_the_column_name(tmp_path, images):
    lines = ["image_path,label"] + [f"{p},{v}" for p, v in zip(images, "0123")]
    table = load_manifest(_write(tmp_path / "m.csv", "\n".join(lines) + "\n"), zero_based=True)
    assert table.density_label.tolist() == [1, 2, 3, 4]


def test_dicom_style_metadata_columns_and_extras_are_kept(tmp_path, images):
    text = (
        "image_path,label,AccessionNumber,ViewPosition,ImageLaterality,site\n"
        f"{images[0]},B,ACC1,mlo,left,north\n"
        f"{images[1]},C,ACC1,cc,R,north\n"
    )
    table = load_manifest(_write(tmp_path / "m.csv", text))
    assert table.accession.tolist() == ["ACC1", "ACC1"]
    assert table.patient_id.tolist() == ["ACC1", "ACC1"]  # falls back to the accession
    assert table.view.tolist() == ["MLO", "CC"]
    assert table.laterality.tolist() == ["L", "R"]
    assert table.site.tolist() == ["north", "north"]


def test_missing_metadata_is_none_and_patient_falls_back_to_file_name(tmp_path, images):
    table = load_manifest(_write(tmp_path / "m.csv", f"image_path,y\n{images[0]},2\n"))
    assert table.loc[0, "accession"] is None and table.loc[0, "view"] is None
    assert table.loc[0, "patient_id"] == "0"


def test_semicolon_separated_csv(tmp_path, images):
    table = load_manifest(_write(tmp_path / "m.csv", f"image_path;label\n{images[0]};D\n"))
    assert table.density_label.tolist() == [4]


def test_class_5_and_unknown_labels_are_dropped_with_a_count(tmp_path, images, caplog):
    text = (
        "image_path,label\n"
        f"{images[0]},2\n"
        f"{images[1]},5\n"
        f"{images[2]},unknown\n"
        f"{images[3]},\n"
        "not/exported.png,5\n"  # dropped rows need no file
    )
    with caplog.at_level(logging.WARNING, logger="mammography.data.manifest"):
        table = load_manifest(_write(tmp_path / "m.csv", text))
    assert table.density_label.tolist() == [2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped 4 of 5 rows" in warnings[0] and "lines 3, 4, 5, 6" in warnings[0]


def test_bad_label_is_reported_with_its_line_number(tmp_path, images):
    text = f"image_path,label\n{images[0]},1\n\n{images[1]},dense\n{images[2]},9\n"
    with pytest.raises(ManifestError) as err:
        load_manifest(_write(tmp_path / "m.csv", text))
    message = str(err.value)
    assert "m.csv, line 4:" in message  # the blank line 3 still counts
    assert "'dense'" in message and "1 more bad row: line 5" in message


@pytest.mark.parametrize(
    "row, problem",
    [(",2", "image_path is empty"), ("img/missing.png,2", "does not exist"), ("{img},0", "label_0based")],
)
def test_bad_rows(tmp_path, images, row, problem):
    text = f"image_path,density_label\n{images[0]},1\n{row.format(img=images[1])}\n"
    with pytest.raises(ManifestError, match=f"line 3: .*{problem}"):
        load_manifest(_write(tmp_path / "m.csv", text))


def test_check_files_false_accepts_missing_images(tmp_path):
    table = load_manifest(_write(tmp_path / "m.csv", "image_path,y\nnowhere.dcm,1\n"), check_files=False)
    assert table.image_path.tolist() == [str(tmp_path / "nowhere.dcm")]


def test_missing_csv_names_the_file(tmp_path):
    with pytest.raises(ManifestError, match="nope.csv does not exist"):
        load_manifest(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "empty"),
        ("file,grade\na.png,2\n", "match no manifest form"),
        ("image_path,notes\na.png,x\n", "no label column"),
        ("image_path,label\na.png,1,extra\n", "line 2: 3 fields"),
    ],
)
def test_malformed_csv(tmp_path, text, problem):
    with pytest.raises(ManifestError, match=problem):
        load_manifest(_write(tmp_path / "m.csv", text))


# ---------------------------------------------------------------------------
# form 3: AccessionNumber, Classification + --dicom-root
# ---------------------------------------------------------------------------


def _accession_csv(phantoms: Path, path: Path, extra_rows: str = "", zero: bool = False) -> Path:
    raw = pd.read_csv(phantoms, keep_default_na=False).drop_duplicates("accession")
    lines = ["AccessionNumber,Classification,ClassificationDate"]
    for row in raw.itertuples():
        label = row.density_label - 1 if zero else "ABCD"[row.density_label - 1]
        lines.append(f"{row.accession},{label},2024-02-01")
    return _write(path, "\n".join(lines) + "\n" + extra_rows)


def test_accession_manifest_finds_every_dicom_and_reads_headers(phantoms, tmp_path):
    table = load_manifest(_accession_csv(phantoms, tmp_path / "acc.csv"), dicom_root=phantoms.parent / "dicom")
    own = load_manifest(phantoms).set_index("image_path")
    assert len(table) == 8 and table.attrs["form"] == "accession"
    assert set(table.image_path) == set(own.index)
    for row in table.itertuples():
        expected = own.loc[row.image_path]
        assert row.density_label == expected.density_label
        assert (row.accession, row.patient_id) == (expected.accession, expected.patient_id)
        assert (row.view, row.laterality) == (expected.view, expected.laterality)
    assert "ClassificationDate" in table.columns


def test_accession_manifest_zero_based_flag(phantoms, tmp_path):
    table = load_manifest(
        _accession_csv(phantoms, tmp_path / "acc.csv", zero=True), dicom_root=phantoms.parent / "dicom",
        zero_based=True,
    )
    assert sorted(table.density_label.unique()) == [2, 3]


def test_accession_without_files_is_dropped_with_a_warning(phantoms, tmp_path, caplog):
    csv = _accession_csv(phantoms, tmp_path / "acc.csv", extra_rows="NOPE1,B,2024-02-01\n")
    with caplog.at_level(logging.WARNING, logger="mammography.data.manifest"):
        table = load_manifest(csv, dicom_root=phantoms.parent / "dicom")
    assert len(table) == 8
    assert any("dropped 1 of 3 rows whose accession has no .dcm" in r.getMessage() for r in caplog.records)


def test_repeated_accession_keeps_the_latest_classification(phantoms, tmp_path, caplog):
    raw = pd.read_csv(phantoms, keep_default_na=False)
    first = raw.accession.iloc[0]
    text = (
        "AccessionNumber,Classification,ClassificationDate\n"
        f"{first},D,2024-03-01\n"
        f"{first},A,2023-01-01\n"
    )
    with caplog.at_level(logging.WARNING, logger="mammography.data.manifest"):
        table = load_manifest(_write(tmp_path / "acc.csv", text), dicom_root=phantoms.parent / "dicom")
    assert set(table.density_label) == {4} and len(table) == 4
    assert any("listed more than once" in r.getMessage() for r in caplog.records)


def test_accession_manifest_needs_a_dicom_root(phantoms, tmp_path):
    csv = _accession_csv(phantoms, tmp_path / "acc.csv")
    with pytest.raises(ManifestError, match="--dicom-root"):
        load_manifest(csv)
    with pytest.raises(ManifestError, match="is not a folder"):
        load_manifest(csv, dicom_root=tmp_path / "absent")
    with pytest.raises(ManifestError, match="no DICOM file found"):
        load_manifest(csv, dicom_root=tmp_path)
