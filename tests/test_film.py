"""Digitised-film phantoms and what real film archives need: masks, markers, windowing, laterality, grouping.

One small film data set (``mammography synth --style film``) with its
ground truth serves every test: the DICOM files, their 16-bit PNG and 8-bit
JPEG exports, and the true breast, dense, pectoral, label and film-edge
masks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.uid import RLELossless
from scipy import ndimage

from mammography.analysis.patterns import estimate_dense_tissue
from mammography.analysis.spurious import (
    SpuriousThresholds,
    detect_markers,
    find_burned_in,
    image_flags,
    odds_ratio,
    spurious_shares,
    summarise_spurious,
)
from mammography.cli import main
from mammography.data.dataset import MammogramDataset
from mammography.data.splits import patient_grouping, split_patients, strip_orientation_suffix
from mammography.io import (
    breast_mask,
    fit_to_square,
    pectoral_mask,
    read_mammogram,
    segment_breast,
    with_orientation,
)
from mammography.io.window import window_percentiles
from mammography.io.orientation import orientation_from_path, orientation_from_text
from mammography.synth import generate_dataset, make_phantom
from mammography.synth.film import make_film_phantom

SIZE = (512, 320)
N = 16  # 4 women: two of each header style


@pytest.fixture(scope="module")
def film(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("film")
    generate_dataset(root, n=N, seed=3, size=SIZE, style="film", class_mix=(1, 1, 1, 1))
    return root


def manifest(root: Path, fmt: str = "dicom") -> pd.DataFrame:
    name = {"dicom": "manifest.csv", "png": "manifest_png.csv", "jpeg": "manifest_jpeg.csv"}[fmt]
    return pd.read_csv(root / name, keep_default_na=False)


def mask(root: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(root / rel)) > 0


def iou(a, b) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def skin_points(breast: np.ndarray, strips: np.ndarray, margin: int = 3) -> np.ndarray:
    """True breast pixels next to the film background, ``margin`` px or more from strips and the border."""
    points = breast & ndimage.binary_dilation(~breast & ~strips)
    if strips.any():
        points &= ~ndimage.binary_dilation(strips, iterations=margin)
    points[:margin] = points[-margin:] = False
    points[:, :margin] = points[:, -margin:] = False
    return points


def resized(pixels: np.ndarray, size: int) -> np.ndarray:
    square, g = fit_to_square(np.asarray(pixels, dtype=np.float32), size, flip=False)
    (top, left), (h, w) = g.offset, g.resized_shape
    return np.clip(np.asarray(square)[top : top + h, left : left + w], 0, 1)


def on_grid(full: np.ndarray, shape, majority: bool = False) -> np.ndarray:
    """A mask resampled onto a smaller grid: cells that touch it (or that it mostly covers)."""
    rows = np.linspace(0, full.shape[0], shape[0] + 1).astype(int)
    cols = np.linspace(0, full.shape[1], shape[1] + 1).astype(int)
    counts = np.add.reduceat(np.add.reduceat(full.astype(int), rows[:-1], axis=0), cols[:-1], axis=1)
    return counts >= 0.5 * np.outer(np.diff(rows), np.diff(cols)) if majority else counts > 0


# ---------------------------------------------------------------------------
# 1. the film phantoms
# ---------------------------------------------------------------------------


def test_film_files_look_like_a_digitised_film_archive(film):
    table = manifest(film)
    assert len(table) == N and (table["laterality"] == "").all() and (table["view"] == "").all()
    assert table["patient_id"].is_unique  # one PatientID per image
    styles = {"tag": 0, "id": 0}
    for row in table.itertuples():
        ds = pydicom.dcmread(film / row.image_path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.file_meta.TransferSyntaxUID == RLELossless
        assert ds.BitsStored == 16 and ds.PhotometricInterpretation == "MONOCHROME2"
        for absent in ("ImageLaterality", "ViewPosition", "PixelSpacing", "WindowCenter", "VOILUTSequence"):
            assert absent not in ds
        if "Laterality" in ds:
            styles["tag"] += 1
            assert (ds.Laterality, ds.PatientOrientation) == (row.true_laterality, row.true_view)
            assert ds.AccessionNumber == row.accession != ""
        else:
            styles["id"] += 1
            side = {"L": "LEFT", "R": "RIGHT"}[row.true_laterality]
            assert ds.PatientID.endswith(f"_{side}_{row.true_view}") and not ds.AccessionNumber
    assert styles == {"tag": N // 2, "id": N // 2}
    png = np.asarray(Image.open(film / manifest(film, "png").image_path[0]))
    jpeg = Image.open(film / manifest(film, "jpeg").image_path[0])
    assert png.dtype == np.uint16 and jpeg.mode == "L" and jpeg.format == "JPEG"


def test_film_phantom_has_the_properties_that_broke_the_clean_world():
    labels, strips_touching, peripheries = [], 0, []
    for i in range(12):
        view, lat = ("CC", "MLO")[i % 2], ("L", "R")[(i // 2) % 2]
        p = make_film_phantom(1 + i % 4, view, lat, SIZE, seed=i)
        r0, c0, r1, c1 = p.label_bbox
        labels.append((r1 - r0) * (c1 - c0) / p.pixels.size)
        assert not (p.label_mask & p.breast_mask).any() and not (p.edge_mask & p.breast_mask).any()
        assert (p.pixels[~p.breast_mask & ~p.edge_mask & ~ndimage.binary_dilation(p.label_mask, iterations=8)] == 0).all()
        strips_touching += bool((ndimage.binary_dilation(p.edge_mask, iterations=2) & p.breast_mask).any())
        skin = p.breast_mask & ndimage.binary_dilation(~p.breast_mask & ~p.edge_mask)
        peripheries.append(np.median(p.pixels[skin]) / np.median(p.pixels[p.breast_mask]))
        if view == "CC":
            assert p.nipple is not None and p.breast_mask[p.nipple]
        assert p.pectoral_mask.any() == (view == "MLO")
    assert min(labels) >= 0.015 and max(labels) <= 0.045 and np.median(labels) >= 0.02
    assert strips_touching >= 3
    assert 0.02 <= np.median(peripheries) <= 0.2


# ---------------------------------------------------------------------------
# 2. breast mask and pectoral muscle
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["dicom", "png", "jpeg"])
def test_breast_mask_reaches_the_skin_line_keeps_the_nipple_and_drops_strips_and_labels(film, fmt):
    for row in manifest(film, fmt).itertuples():
        m = read_mammogram(film / row.image_path)
        truth = mask(film, row.breast_mask_path)
        strips, label = mask(film, row.film_edge_mask_path), mask(film, row.label_mask_path)
        found = breast_mask(m.pixels)
        assert iou(found, truth) > 0.95, row.image_path
        points = skin_points(truth, strips)
        assert found[points].all(), f"{row.image_path}: {(points & ~found).sum()} skin-line points outside"
        # labels out; of a strip at most its blurred rim (2 px) where it meets the breast
        assert not (found & label).any() and not (found & ndimage.binary_erosion(strips, iterations=2)).any()


def test_clean_phantoms_keep_their_mask_quality():
    for i in range(6):
        p = make_phantom(1 + i % 4, ("CC", "MLO")[i % 2], ("L", "R")[i % 2 == 0], (512, 416), seed=[5, i])
        found = breast_mask(p.pixels)
        assert iou(found, p.breast_mask) > 0.98
        assert found[skin_points(p.breast_mask, np.zeros_like(p.breast_mask))].all()


def test_pectoral_mask_on_mlo_and_dense_estimate_without_it(film):
    found, with_muscle, without = 0, [], []
    for row in manifest(film).itertuples():
        m = read_mammogram(film / row.image_path)
        truth = mask(film, row.pectoral_mask_path)
        breast = breast_mask(m.pixels)
        muscle = pectoral_mask(m.pixels, breast, view=row.true_view)
        if row.true_view == "CC":
            assert not muscle.any()
            continue
        if muscle.any():
            found += 1
            assert iou(muscle, truth) > 0.75, row.image_path
        with_muscle.append((estimate_dense_tissue(m.pixels, breast) & truth).sum() / truth.sum())
        without.append((estimate_dense_tissue(m.pixels, breast, exclude=muscle) & truth).sum() / truth.sum())
    assert found >= 0.75 * N / 2
    # the muscle is as bright as dense tissue: counted as dense unless excluded
    assert np.mean(with_muscle) > 0.5 and np.mean(without) < 0.5 * np.mean(with_muscle)


# ---------------------------------------------------------------------------
# 3. markers and film edges
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [128, 256, 512])
def test_labels_are_found_at_every_analysis_size_and_strips_are_never_markers(film, size):
    for row in manifest(film).itertuples():
        small = resized(read_mammogram(film / row.image_path).pixels, size)
        label = on_grid(mask(film, row.label_mask_path), small.shape)
        strips = on_grid(mask(film, row.film_edge_mask_path), small.shape)
        found = find_burned_in(small, breast_mask(small))
        assert found.markers[label].mean() >= 0.5, f"{row.image_path}: label missed at {size} px"
        parts, count = ndimage.label(found.markers)
        assert count == found.n_markers >= 1
        for k in range(1, count + 1):  # no marker is a strip, none is merged with one
            assert (strips[parts == k]).mean() < 0.25, row.image_path
        core = on_grid(mask(film, row.film_edge_mask_path), small.shape, majority=True)
        if size >= 256 and core.sum() > 0.01 * core.size:  # strips of a pixel or two may go unseen at 128 px
            assert found.n_film_edges >= 1 and found.film_edges[core].mean() > 0.5, row.image_path


def test_detect_markers_keeps_its_interface_and_ignores_film_edges():
    p = make_film_phantom(2, "MLO", "L", SIZE, seed=4, edge_sides=("top", "right"))
    markers, n = detect_markers(p.pixels.clip(0, 1), breast_mask(p.pixels.clip(0, 1)))
    assert n == 1 and markers[p.label_mask].mean() > 0.9 and not (markers & p.edge_mask).any()


# ---------------------------------------------------------------------------
# 4. spurious-attention flags relative to the area
# ---------------------------------------------------------------------------


def test_uniform_map_is_never_flagged_whatever_the_breast_covers(film):
    rows = []
    for row in manifest(film).itertuples():
        breast = mask(film, row.breast_mask_path)
        strips = mask(film, row.film_edge_mask_path)
        uniform = spurious_shares(np.ones(breast.shape), breast, film_edges=strips)
        outside = spurious_shares(np.where(breast, 0.05, 1.0), breast, film_edges=strips)
        rows += [uniform.to_dict(), outside.to_dict()]
    table = pd.DataFrame([{f"{k}_share": r[k] for k in ("outside_breast", "border", "marker", "film_edge")}
                          | {f"{k}_area": r[f"{k}_area"] for k in ("outside_breast", "border", "marker", "film_edge")}
                          for r in rows])
    flags = image_flags(table)
    uniform, away = flags.iloc[0::2], flags.iloc[1::2]
    # a uniform map puts 0.5-0.8 of its mass outside a film's breast, yet attends nowhere in particular
    shares = table.iloc[0::2]["outside_breast_share"]
    assert shares.max() > 0.7 and shares.max() - shares.min() > 0.1
    np.testing.assert_allclose(uniform["outside_breast_ratio"], 1.0)
    assert not uniform["spurious_flag"].any()
    assert away["outside_breast_flag"].all()
    summary = summarise_spurious(table.iloc[0::2].reset_index(drop=True))
    assert not summary["flagged"] and "odds ratio" in summary["rule"]
    assert odds_ratio(0.5, 0.5) == 1.0 and np.isnan(odds_ratio(0.3, 0.0))
    assert SpuriousThresholds.from_dict({"outside_breast": 0.7, "border": 0.2}) == SpuriousThresholds()


def test_method_text_states_the_relative_rule():
    from mammography.report.analysis_tables import _spurious_table

    table = pd.DataFrame({"outside_breast_share": [0.8], "outside_breast_area": [0.75], "border_share": [0.1],
                          "border_area": [0.1], "marker_share": [0.0], "marker_area": [0.01],
                          "film_edge_share": [0.02], "film_edge_area": [0.03]})

    class Analysed:  # what the table reads from an analysis: its summary
        summary = {"spurious": summarise_spurious(table)}

    text = _spurious_table([Analysed()], ["42"])
    assert "odds ratio" in text.caption and "uniform map on the same image" in text.caption
    assert "Film\nedges" in text.headers and "exceeds 2.0" in text.caption


# ---------------------------------------------------------------------------
# 5. laterality and view, with their source; rasters mirrored
# ---------------------------------------------------------------------------


def test_laterality_and_view_sources_in_dicom_and_rasters(film):
    expected = {
        ("dicom", True): ("Laterality", "PatientOrientation"),
        ("dicom", False): ("PatientID", "PatientID"),
        ("png", True): ("image", "image"),
        ("png", False): ("file name", "file name"),
        ("jpeg", True): ("image", "image"),
        ("jpeg", False): ("file name", "file name"),
    }
    image_views = []
    for fmt in ("dicom", "png", "jpeg"):
        for row in manifest(film, fmt).itertuples():
            tagged = bool(row.accession)
            m = with_orientation(read_mammogram(film / row.image_path))
            lat_source, view_source = expected[fmt, tagged]
            assert (m.laterality, m.laterality_source) == (row.true_laterality, lat_source), row.image_path
            assert m.view_source == view_source
            if view_source == "image":
                image_views.append(m.view == row.true_view)
            else:
                assert m.view == row.true_view
            hinted = with_orientation(read_mammogram(film / row.image_path), laterality_hint="left")
            assert (hinted.laterality, hinted.laterality_source) == ("L", "manifest")
    assert np.mean(image_views) >= 0.75


def test_rasters_are_mirrored_by_their_resolved_laterality(film):
    table = manifest(film, "png")
    ds = MammogramDataset([film / p for p in table.image_path], img_size=64)
    for i, row in enumerate(table.itertuples()):
        prepared = ds.prepared(i)
        assert prepared.geometry.flipped == (row.true_laterality == "R")
        assert prepared.laterality == row.true_laterality and prepared.laterality_source in ("file name", "image")
    hinted = MammogramDataset([film / table.image_path[0]], img_size=64, laterality_hints=["R"])
    assert hinted.prepared(0).geometry.flipped and hinted.prepared(0).laterality_source == "manifest"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mass-Test_P_00012_RIGHT_MLO", ("R", "MLO")),
        ("Calc-Training_P_00001_LEFT_CC", ("L", "CC")),
        ("case_L_CC", ("L", "CC")),
        ("IMG-RMLO-2", ("R", "MLO")),
        ("P_00012_R", (None, None)),  # a lone R is no laterality
        ("left_breast", ("L", None)),
        ("LEFT_RIGHT_CC", (None, "CC")),  # contradictory
        ("F0000300001_2", (None, None)),
    ],
)
def test_orientation_tokens(text, expected):
    assert orientation_from_text(text) == expected


def test_folder_names_are_searched_after_the_file_name(tmp_path):
    lat, view = orientation_from_path(tmp_path / "Mass-Training_P_00001_LEFT_CC" / "07-20-2016" / "1-1.dcm")
    assert (lat.value, lat.source, view.value, view.source) == ("L", "folder name", "CC", "folder name")


# ---------------------------------------------------------------------------
# 6. grouping patients
# ---------------------------------------------------------------------------


def test_per_image_patient_ids_are_grouped_by_woman(film):
    table = manifest(film)
    grouping = patient_grouping(table)
    assert grouping.rule == "patient_id without view/laterality suffix + accession"
    assert (pd.Series(grouping.keys.values).groupby(table["woman"].values).nunique() == 1).all()
    assert grouping.keys.nunique() == table["woman"].nunique()
    split = split_patients(table, val_frac=0.5, seed=1)
    assert (split.groupby(table["woman"]).nunique() == 1).all()  # no woman on both sides
    assert strip_orientation_suffix("Mass-Test_P_00012_RIGHT_MLO") == "Mass-Test_P_00012"
    assert strip_orientation_suffix("SYN00007-00001") == "SYN00007-00001"
    # the clean phantoms' ids are per patient already
    assert patient_grouping(pd.DataFrame({"image_path": list("abcd"), "density_label": [1] * 4,
                                          "patient_id": ["p1", "p1", "p2", "p2"],
                                          "accession": ["a1", "a1", "a2", "a2"]})).rule == "patient_id"


# ---------------------------------------------------------------------------
# 7. windowing without a window
# ---------------------------------------------------------------------------


def test_percentiles_inside_the_breast_saturate_at_most_half_a_percent(film):
    new, old = [], []
    for row in manifest(film).itertuples():
        m = read_mammogram(film / row.image_path)
        truth = mask(film, row.breast_mask_path)
        assert m.intensity_rule == "breast_percentiles"
        new.append((m.pixels[truth] >= 1.0).mean())
        stored = pydicom.dcmread(film / row.image_path).pixel_array
        old.append((window_percentiles(stored)[truth] >= 1.0).mean())
        background = ~truth & ~mask(film, row.film_edge_mask_path) & ~ndimage.binary_dilation(
            mask(film, row.label_mask_path), iterations=8)
        assert (m.pixels[background] == 0).all()  # the film base stays black
    assert max(new) <= 0.005
    assert max(old) > 0.005  # the whole-film window does saturate the densest tissue


# ---------------------------------------------------------------------------
# 8 and the CLI: a run on the film exports (grouping log, sources, collapse)
# ---------------------------------------------------------------------------


def test_synth_cli_writes_the_film_style(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "f"), "--style", "film", "--n", "8", "--size", "256x160",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "film-style phantom mammograms" in out and "manifest_jpeg.csv" in out
    info = json.loads((tmp_path / "f" / "synth.json").read_text())
    assert info["style"] == "film" and info["header_styles"] == {"series_tag": 4, "patient_id": 4}
