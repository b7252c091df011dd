"""Phantom generator: real files written by ``generate_dataset`` and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless
from scipy import ndimage

from mammography.errors import ConfigError
from mammography.synth import (
    BIRADS_FRACTION_LIMITS,
    MANIFEST_COLUMNS,
    TARGET_FRACTION_RANGES,
    generate_dataset,
    jpeg2000_available,
    make_phantom,
    parse_size,
    render_text,
    stored_values,
)
from mammography.synth.dataset import _plan

SIZE = (192, 156)
N = 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    return generate_dataset(out, n=N, seed=7, size=SIZE, class_mix=(1, 1, 1, 1))


@pytest.fixture(scope="module")
def manifest(dataset) -> pd.DataFrame:
    return pd.read_csv(dataset, keep_default_na=False)


@pytest.fixture(scope="module")
def headers(dataset, manifest) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(dataset.parent / p) for p in manifest.image_path]


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Window the stored values the DICOM way and undo MONOCHROME1 (dense bright)."""
    stored = ds.pixel_array.astype(np.float64)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    values = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return 1.0 - values if ds.PhotometricInterpretation == "MONOCHROME1" else values


def _mask(root: Path, rel: str) -> np.ndarray:
    image = np.asarray(Image.open(root / rel))
    assert set(np.unique(image)) <= {0, 255}
    return image > 0


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------
# manifest and DICOM tags
# ---------------------------------------------------------------------------


def test_manifest_columns_and_counts(dataset, manifest):
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == N
    assert sorted(manifest.density_label.unique()) == [1, 2, 3, 4]
    assert manifest.image_path.str.startswith("dicom/").all()  # relative to the manifest
    assert (dataset.parent / "synth.json").is_file()


def test_dicom_tags_match_the_manifest(manifest, headers):
    for row, ds in zip(manifest.itertuples(), headers):
        assert ds.Modality == "MG"
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
        assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 14)
        assert ds.HighBit == ds.BitsStored - 1 and ds.PixelRepresentation == 0
        assert (ds.Rows, ds.Columns) == SIZE
        assert ds.ImageLaterality == row.laterality
        assert ds.ViewPosition == row.view
        assert ds.PatientID == row.patient_id
        assert ds.AccessionNumber == row.accession
        assert float(ds.PixelSpacing[0]) > 0 and "WindowCenter" in ds and "WindowWidth" in ds
        assert ds.StudyDate == "20240115"
        assert ds.pixel_array.max() < 2**ds.BitsStored


def test_photometric_bit_depth_and_compression_mix(headers):
    photometric = {ds.PhotometricInterpretation for ds in headers}
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    monochrome1 = sum(ds.PhotometricInterpretation == "MONOCHROME1" for ds in headers)
    assert monochrome1 < len(headers) / 2  # mostly MONOCHROME2
    syntaxes = [ds.file_meta.TransferSyntaxUID for ds in headers]
    if jpeg2000_available():
        assert 0 < syntaxes.count(JPEG2000Lossless) < len(headers) / 2
    else:
        assert JPEG2000Lossless not in syntaxes


def test_four_views_per_patient_one_exam_one_class(manifest, headers):
    manifest = manifest.assign(
        study=[ds.StudyInstanceUID for ds in headers], sop=[ds.SOPInstanceUID for ds in headers]
    )
    for _, exam in manifest.groupby("patient_id"):
        assert sorted(zip(exam.laterality, exam.view)) == [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
        assert exam.accession.nunique() == 1 and exam.study.nunique() == 1
        assert exam.density_label.nunique() == 1
    assert manifest.sop.is_unique
    assert manifest.accession.nunique() == N // 4


def test_window_and_photometric_make_tissue_bright(dataset, manifest, headers):
    for row, ds in zip(manifest.itertuples(), headers):
        stored = ds.pixel_array.astype(float)
        breast = _mask(dataset.parent, row.breast_mask_path)
        inside, outside = stored[breast].mean(), stored[~breast].mean()
        # MONOCHROME1 stores tissue dark (inverted); the display is the same
        assert (inside < outside) if ds.PhotometricInterpretation == "MONOCHROME1" else (inside > outside)
        shown = _display(ds)
        assert shown[breast].mean() > shown[~breast].mean() + 0.15


def test_pixels_read_back_equal_the_phantom(dataset, manifest, headers):
    plans = _plan(N, 7, np.full(4, 0.25), None, 0.2, 0.2 if jpeg2000_available() else 0.0, 0.15)
    checked = set()
    for plan, row, ds in zip(plans, manifest.itertuples(), headers):
        key = (ds.file_meta.TransferSyntaxUID, ds.PhotometricInterpretation)
        if key in checked:
            continue
        checked.add(key)
        phantom = make_phantom(
            plan.density_class, plan.view, plan.laterality, SIZE,
            seed=[7, plan.patient, plan.index, 0x5EED],
            dense_fraction=plan.dense_fraction, breast_scale=plan.breast_scale,
        )
        expected, center, width = stored_values(phantom.pixels, plan.bits, plan.monochrome1)
        np.testing.assert_array_equal(ds.pixel_array, expected)  # lossless, JPEG 2000 included
        assert float(ds.WindowCenter) == pytest.approx(center) and float(ds.WindowWidth) == width
        quantum = 1.0 / (0.93 * (2**plan.bits - 1))
        assert np.abs(_display(ds) - phantom.pixels).max() <= quantum
    assert len(checked) >= 2


def test_read_mammogram_reads_the_phantoms(dataset, manifest):
    from mammography.io import breast_mask, read_mammogram

    for row in manifest.itertuples():
        m = read_mammogram(dataset.parent / row.image_path)
        breast = _mask(dataset.parent, row.breast_mask_path)
        dense = _mask(dataset.parent, row.roi_path)
        assert m.pixels.shape == SIZE and m.laterality == row.laterality and m.view == row.view
        assert m.pixels[dense].mean() > m.pixels[breast & ~dense].mean()
        assert m.pixels[breast].mean() > m.pixels[~breast].mean() + 0.15
        # the io breast mask finds the phantom's breast and leaves the marker out
        found = breast_mask(m.pixels)
        assert (found & breast).sum() / (found | breast).sum() > 0.9
        assert not (found & (m.pixels >= 0.999) & ~breast).any()


# ---------------------------------------------------------------------------
# anatomy and ground truth
# ---------------------------------------------------------------------------


def test_masks_exist_match_sizes_and_dense_lies_in_breast(dataset, manifest):
    for row in manifest.itertuples():
        dense = _mask(dataset.parent, row.roi_path)
        breast = _mask(dataset.parent, row.breast_mask_path)
        assert dense.shape == breast.shape == SIZE
        assert not (dense & ~breast).any()
        assert 0.25 < breast.mean() < 0.9


def test_dense_fraction_lies_in_the_birads_range_of_the_class(dataset, manifest):
    for row in manifest.itertuples():
        low, high = BIRADS_FRACTION_LIMITS[row.density_label]
        target_low, target_high = TARGET_FRACTION_RANGES[row.density_label]
        assert target_low - 0.005 <= row.dense_fraction <= target_high + 0.005
        assert low < row.dense_fraction < high
        dense = _mask(dataset.parent, row.roi_path).sum()
        breast = _mask(dataset.parent, row.breast_mask_path).sum()
        if row.view == "CC":  # no pectoral: the manifest value is the mask ratio
            assert dense / breast == pytest.approx(row.dense_fraction, abs=1e-3)
        else:  # the BI-RADS share leaves the pectoral muscle out
            assert dense / breast < row.dense_fraction


def test_chest_wall_is_on_the_left_for_L_and_on_the_right_for_R(dataset, manifest):
    for row in manifest.itertuples():
        breast = _mask(dataset.parent, row.breast_mask_path)
        chest, far = (breast[:, 0], breast[:, -1]) if row.laterality == "L" else (breast[:, -1], breast[:, 0])
        assert chest.mean() > 0.4 and not far.any()


@pytest.mark.parametrize("view", ["CC", "MLO"])
@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("shape", [(128, 104), (256, 208)])
def test_pectoral_on_mlo_only_in_the_chest_wall_top_corner(view, laterality, shape):
    p = make_phantom(2, view, laterality, shape, seed=3)
    corner_col = 0 if laterality == "L" else shape[1] - 1
    if view == "CC":
        assert not p.pectoral_mask.any()
        return
    assert p.pectoral_mask[0, corner_col] and p.pectoral_mask[0].sum() > 0.1 * shape[1]
    assert not (p.pectoral_mask & ~p.breast_mask).any()
    assert not p.pectoral_mask[shape[0] * 3 // 4 :].any()  # a triangle at the top, not a band
    muscle = p.pixels[p.pectoral_mask].mean()
    fat = p.pixels[p.breast_mask & ~p.pectoral_mask & ~p.dense_mask].mean()
    assert muscle > fat + 0.1


@pytest.mark.parametrize("view", ["CC", "MLO"])
@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("shape", [(128, 104), (256, 208)])
@pytest.mark.parametrize("density_class", [1, 4])
def test_marker_is_burned_in_outside_the_breast(view, laterality, shape, density_class):
    p = make_phantom(density_class, view, laterality, shape, seed=11, shortcut=True)
    r0, c0, r1, c1 = p.marker_bbox
    assert 0 <= r0 < r1 <= shape[0] and 0 <= c0 < c1 <= shape[1]
    assert not p.breast_mask[r0:r1, c0:c1].any()
    glyphs = render_text(f"{laterality} {view}", scale=max(1, round(0.025 * shape[0] / 7)))
    assert glyphs.shape == (r1 - r0, c1 - c0)
    assert np.all(p.pixels[r0:r1, c0:c1][glyphs] == 1.0)
    far_half = slice(shape[1] // 2, None) if laterality == "L" else slice(0, shape[1] // 2)
    assert p.pixels[:, far_half][r0:r1].max() == 1.0  # away from the chest wall
    a0, b0, a1, b1 = p.artifact_bbox
    assert not p.breast_mask[a0:a1, b0:b1].any()
    assert r1 <= a0 or a1 <= r0  # marker and artefact do not overlap


@pytest.mark.parametrize("density_class", [1, 2, 3, 4])
def test_phantom_dense_fraction_texture_and_contrast(density_class):
    p = make_phantom(density_class, "CC", "L", (256, 208), seed=density_class)
    low, high = TARGET_FRACTION_RANGES[density_class]
    assert low <= p.dense_fraction <= high
    assert p.dense_fraction == pytest.approx(p.dense_mask.sum() / p.breast_mask.sum(), abs=1e-9)
    fat = p.breast_mask & ~p.dense_mask
    assert p.pixels[p.dense_mask].mean() > p.pixels[fat].mean() + 0.1  # dense is brighter
    # textured tissue, not flat blobs: brightness varies inside the dense mask,
    # and scattered classes come as several separate islands
    assert p.pixels[p.dense_mask].std() > 0.03
    if density_class <= 2:
        assert ndimage.label(p.dense_mask)[1] >= 3


def test_phantom_is_deterministic_per_seed():
    a = make_phantom(3, "MLO", "R", (128, 104), seed=5)
    b = make_phantom(3, "MLO", "R", (128, 104), seed=5)
    c = make_phantom(3, "MLO", "R", (128, 104), seed=6)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.dense_mask, b.dense_mask)
    assert not np.array_equal(a.pixels, c.pixels)


def test_split_keeps_each_patient_on_one_side(manifest):
    sides = manifest.groupby("patient_id").split.nunique()
    assert (sides == 1).all()
    assert set(manifest.split) == {"train", "val"}
    val_patients = manifest[manifest.split == "val"].patient_id.nunique()
    assert val_patients == round(0.2 * N / 4)


def test_large_split_is_stratified_and_mix_followed():
    plans = _plan(400, 0, np.array([0.1, 0.4, 0.4, 0.1]), None, 0.2, 0.2, 0.15)
    patients = pd.DataFrame({"cls": [p.density_class for p in plans], "split": [p.split for p in plans]})[::4]
    assert patients.cls.value_counts().sort_index().tolist() == [10, 40, 40, 10]
    assert patients[patients.split == "val"].cls.value_counts().sort_index().tolist() == [2, 8, 8, 2]


# ---------------------------------------------------------------------------
# reproducibility and the shortcut
# ---------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    again = generate_dataset(tmp_path / "again", n=N, seed=7, size=SIZE, class_mix=(1, 1, 1, 1))
    first, second = _all_files(dataset.parent), _all_files(again.parent)
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)
    other = generate_dataset(tmp_path / "other", n=4, seed=8, size=SIZE)
    other_files = _all_files(other.parent)
    other_dicoms = sorted(name for name in other_files if name.endswith(".dcm"))
    assert other_dicoms and not set(other_dicoms) & set(first)  # accession carries the seed
    first_pixels = pydicom.dcmread(dataset.parent / sorted(n for n in first if n.endswith(".dcm"))[0])
    other_pixels = pydicom.dcmread(other.parent / other_dicoms[0])
    assert not np.array_equal(first_pixels.pixel_array, other_pixels.pixel_array)


def test_shortcut_marks_most_images_of_one_class_only(tmp_path):
    path = generate_dataset(tmp_path, n=40, seed=1, size=(128, 104), class_mix=(0.2, 0.2, 0.4, 0.2), shortcut=3)
    manifest = pd.read_csv(path, keep_default_na=False)
    marked = manifest.artifact_bbox != ""
    assert not marked[manifest.density_label != 3].any()
    in_class = marked[manifest.density_label == 3]
    assert in_class.sum() == round(0.9 * len(in_class)) and 0 < in_class.sum() < len(in_class)
    for row in manifest[marked].itertuples():
        r0, c0, r1, c1 = (int(v) for v in row.artifact_bbox.split(","))
        assert 0 <= r0 < r1 <= 128 and 0 <= c0 < c1 <= 104
        shown = _display(pydicom.dcmread(path.parent / row.image_path))
        assert shown[r0:r1, c0:c1].min() > 0.9  # a bright burned-in square
        breast = _mask(path.parent, row.breast_mask_path)
        assert not breast[r0:r1, c0:c1].any()


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------


def test_parse_size_forms():
    assert parse_size("1024x832") == (1024, 832)
    assert parse_size("512") == (512, 416)
    assert parse_size(1024) == (1024, 832)
    assert parse_size((300, 200)) == (300, 200)
    for bad in ("12x", "axb", "32x32", "1x2x3"):
        with pytest.raises(ConfigError):
            parse_size(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"class_mix": (1, 1, 1)},
        {"class_mix": (1, -1, 1, 1)},
        {"shortcut": 5},
        {"val_frac": 1.0},
        {"compressed_share": 1.5},
        {"seed": -1},
        {"size": "10x10"},
    ],
)
def test_invalid_parameters_raise_config_error(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        generate_dataset(tmp_path, **{"n": 4, "size": (64, 52), **kwargs})
    assert not (tmp_path / "manifest.csv").exists()


def test_output_folder_that_is_a_file_is_a_config_error(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    with pytest.raises(ConfigError, match="taken"):
        generate_dataset(blocker, n=4, size=(64, 52))


def test_stored_values_window_round_trip():
    pixels = np.linspace(0, 1, 101, dtype=np.float32)[None, :]
    for bits in (12, 14):
        for inverted in (False, True):
            stored, center, width = stored_values(pixels, bits, inverted)
            assert stored.max() < 2**bits
            shown = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
            shown = 1 - shown if inverted else shown
            np.testing.assert_allclose(shown, pixels, atol=1.0 / (2**bits * 0.9))


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "mammography", "synth", *args],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )


def test_cli_writes_the_data_set_and_says_what(tmp_path):
    out = _cli("--out", str(tmp_path / "ph"), "--n", "6", "--seed", "2", "--size", "128", "--shortcut", "B",
               "--no-progress")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("wrote 8 phantom mammograms (2 patients, 128x104, seed 2)")
    assert any("class 2 (B) scattered fibroglandular" in line for line in lines)
    assert any("JPEG 2000 lossless" in line for line in lines)
    assert lines[-1] == f"manifest: {tmp_path / 'ph' / 'manifest.csv'}"
    assert len(pd.read_csv(tmp_path / "ph" / "manifest.csv")) == 8
    assert "tile number" not in out.stderr  # no encoder chatter


@pytest.mark.parametrize("flag", [["--size", "12x"], ["--class-mix", "1,2"], ["--shortcut", "7"], ["--n", "0"]])
def test_cli_bad_flag_is_one_line_and_exit_2(tmp_path, flag):
    out = _cli("--out", str(tmp_path / "ph"), *flag)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert "error" in out.stderr
