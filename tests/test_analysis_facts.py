"""Image facts found once per image and shared by every run; the batched measurements equal the formulas.

Real phantom DICOMs, real (untrained) EfficientNet-B0 run folders of different
input sizes and laterality handling, and the genuine earlier-project runs of
``tests/fixtures/pipelines`` (centre-crop geometry).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from _runs import phantom_rows, write_run
from mammography.analysis import AnalysisOptions, FactStore, analyze_maps, analyze_run, compare_runs
from mammography.analysis.facts import FactSources, compute_image_facts
from mammography.analysis.maps import (
    area_share,
    map_to_grid,
    maps_on_grid,
    mass_share,
    normalise_batch,
    normalise_map,
    top_fraction_mask,
)
from mammography.analysis.localisation import dice, iou, pointing_game, threshold_map
from mammography.analysis.spurious import border_band
from mammography.errors import ConfigError
from mammography.io.geometry import compute_crop_geometry, compute_geometry
from mammography.runs import load_run

FIXTURES = Path(__file__).parent / "fixtures" / "pipelines"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return phantom_rows(tmp_path_factory.mktemp("phantoms"), n=16, seed=3, size=(160, 128), shortcut=4, class_mix=(0.25,) * 4)


@pytest.fixture(scope="module")
def runs(phantoms, tmp_path_factory):
    """Three runs on one split that saw the images differently: 64 px mirrored, 64 px, 96 px mirrored."""
    root = tmp_path_factory.mktemp("runs")
    return [
        write_run(root / "results_42", phantoms, seed=42, img_size=64, normalise_laterality=True),
        write_run(root / "results_43", phantoms, seed=43, img_size=64, normalise_laterality=False),
        write_run(root / "results_44", phantoms, seed=44, img_size=96, normalise_laterality=True),
    ]


@pytest.fixture(scope="module")
def shared(runs, tmp_path_factory):
    """The three runs analysed with one fact store (as ``analyze_runs`` does), and that store."""
    cache = tmp_path_factory.mktemp("cache")
    store = FactStore(cache)
    options = AnalysisOptions(device="cpu", cache_dir=cache, batch_size=8)
    return [analyze_run(r, options, facts=store) for r in runs], store, options


def _bits(region):
    return region.breast_bits.tobytes(), region.marker_bits.tobytes(), region.n_markers, region.n_film_edges


def test_facts_are_computed_once_per_image_and_shared_by_every_run(shared, phantoms):
    analyses, store, _ = shared
    assert store.computed == len(phantoms) and store.loaded == 0  # 16 images, 48 run-images
    assert len(list((store.root / "facts").rglob("*.npz"))) == len(phantoms)
    # the runs saw the images at 64 and 96 px, mirrored or not, yet measured against the same masks
    geometries = {(a.geometries[0].size, a.geometries[0].flipped) for a in analyses}
    assert len(geometries) >= 2
    first = [_bits(r) for r in analyses[0].regions]
    for a in analyses[1:]:
        assert [_bits(r) for r in a.regions] == first


def test_a_later_pack_reads_the_facts_and_measures_the_same(shared, runs):
    """A new process (a new store on the same cache) computes nothing and gets identical tables."""
    analyses, store, options = shared
    run = load_run(runs[2])
    warm = FactStore(store.root)
    again = analyze_maps(run, run.dataset(options.cache_dir), analyses[2].maps, _probs(analyses[2]),
                         options=dataclasses.replace(options, marker_occlusion=False), facts=warm)
    assert warm.computed == 0 and warm.loaded == len(again.table)
    cold = FactStore(None)  # no cache folder at all: computed again, in memory only
    fresh = analyze_maps(run, run.dataset(), analyses[2].maps, _probs(analyses[2]),
                         options=dataclasses.replace(options, marker_occlusion=False), facts=cold)
    assert cold.computed == len(again.table)
    columns = [c for c in again.table.columns if not c.startswith("marker_occlusion")]
    pd.testing.assert_frame_equal(again.table[columns], fresh.table[columns], check_exact=True)
    pd.testing.assert_frame_equal(again.table[columns], analyses[2].table[columns], check_exact=True)
    assert [_bits(r) for r in again.regions] == [_bits(r) for r in fresh.regions]


def _probs(analysis) -> np.ndarray:
    """Probabilities that give the analysis's predictions and confidences."""
    n = len(analysis.table)
    probs = np.zeros((n, 4))
    conf = analysis.table["confidence"].to_numpy()
    pred = analysis.table["y_pred"].to_numpy() - 1
    probs[:] = ((1 - conf) / 3)[:, None]
    probs[np.arange(n), pred] = conf
    return probs


def test_entries_are_keyed_by_content_analysis_size_and_supplied_masks(phantoms, tmp_path):
    import pydicom

    # an uncompressed file, so that a pixel can be edited in place
    source = next(Path(p) for p in phantoms["image_path"]
                  if not pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed)
    image = tmp_path / "a.dcm"
    shutil.copy(source, image)
    store = FactStore(tmp_path / "cache")
    facts = store.get(image, 128)
    assert store.computed == 1 and facts.shape == (128, 102)
    assert store.get(image, 128) is not None and store.computed == 1  # memory
    assert FactStore(tmp_path / "cache").get(image, 128).shape == (128, 102)  # disk: nothing computed
    renamed = tmp_path / "copy_with_another_name.dcm"
    shutil.copy(image, renamed)
    store.get(renamed, 128)
    assert store.computed == 1  # same content, same entry
    assert store.get(image, 96).shape == (96, 77) and store.computed == 2  # another analysis size, another entry
    roi = FactSources(roi_path=phantoms["roi_path"].iloc[0])
    assert store.get(image, 128, roi).roi is not None and store.computed == 3
    assert len(list((tmp_path / "cache" / "facts").rglob("*.npz"))) == 3
    # an edited file (a bright label burned into the background corner) is a new entry, with one more marker
    ds = pydicom.dcmread(image)
    pixels = ds.pixel_array.copy()
    breast_on_the_right = facts.breast[:, -20:].sum() > facts.breast[:, :20].sum()
    corner = (slice(140, 150), slice(8, 24) if breast_on_the_right else slice(104, 120))
    pixels[corner] = pixels.min() if ds.PhotometricInterpretation == "MONOCHROME1" else pixels.max()
    ds.PixelData = pixels.tobytes()
    ds.save_as(image)
    edited = store.get(image, 128)
    assert store.computed == 4
    assert edited.n_markers == facts.n_markers + 1


def test_a_damaged_entry_is_computed_again(phantoms, tmp_path):
    store = FactStore(tmp_path)
    image = phantoms["image_path"].iloc[1]
    good = store.get(image, 64)
    (entry,) = (tmp_path / "facts").rglob("*.npz")
    entry.write_bytes(b"not a zip file")
    again = FactStore(tmp_path)
    assert np.array_equal(again.get(image, 64).breast, good.breast) and again.computed == 1


def test_facts_are_found_on_the_image_and_placed_as_each_model_saw_it(phantoms):
    """Markers cover the shortcut square; in model space they follow the run's flip, and a centre crop
    drops what it cut away."""
    from mammography.analysis.spurious import parse_bbox
    from mammography.data.dataset import MammogramDataset

    boxed = phantoms[phantoms["artifact_bbox"].notna()]
    assert len(boxed) >= 1
    row = boxed.iloc[0]
    facts = compute_image_facts(row["image_path"], 160)  # the grid is the original here
    top, left, bottom, right = parse_bbox(row["artifact_bbox"])
    assert facts.markers[top:bottom, left:right].mean() > 0.9 and facts.n_markers >= 2
    straight = facts.in_model(compute_geometry(facts.original_shape, 64))
    mirrored = facts.in_model(compute_geometry(facts.original_shape, 64, flip=True))
    r0, c0, r1, c1 = compute_geometry(facts.original_shape, 64).visible_box()  # the same for both
    for name in ("markers", "breast"):
        a, b = getattr(straight, name)[r0:r1, c0:c1], getattr(mirrored, name)[r0:r1, c0:c1]
        assert a.any() and np.array_equal(b, a[:, ::-1])
    # the model's own square: every bright marker pixel outside the breast is painted by the occlusion
    ds = MammogramDataset([row["image_path"]], img_size=128)
    prepared = ds.prepared(0)
    masks = facts.in_model(prepared.geometry)
    bright = (prepared.square > 0.8) & ~masks.breast
    assert bright.any() and masks.occlusion()[bright].all()
    # a centre crop of this tall image cuts rows at the top and bottom: markers there are not in its square
    crop = compute_crop_geometry(facts.original_shape, 64)
    cropped = facts.in_model(crop)
    visible = crop.visible_original()
    seen = facts.markers & visible[:: facts.original_shape[0] // 160, :: facts.original_shape[1] // 128]
    assert cropped.markers.any() == seen.any()
    assert cropped.image_area.all()  # nothing padded


def test_batched_measurements_equal_the_per_image_formulas(shared):
    """Every number of the batched, vectorised analysis equals the old code path's per-image formulas
    (numpy, one image at a time) on the same maps and masks."""
    from mammography.analysis.inputs import row_sources

    analyses, store, options = shared
    for a in analyses:
        rows = load_run(a.run_path).predictions
        for i, row in a.table.iterrows():
            heat = a.grid_map(i)
            facts = store.get(row["image_path"], options.analysis_size, row_sources(rows.iloc[i], row["image_path"], None))
            breast, markers, edges, roi = facts.breast, facts.markers, facts.film_edges, facts.roi
            band = border_band(breast.shape, options.border_fraction)
            attended = threshold_map(heat, options.attention_threshold)
            dense = roi & breast  # the phantoms' ROI is their dense tissue ("auto")
            mass, area = mass_share(heat, dense, within=breast), area_share(dense, within=breast)
            expected = {
                "outside_breast_share": mass_share(heat, ~breast), "outside_breast_area": area_share(~breast),
                "border_share": mass_share(heat, band), "border_area": area_share(band),
                "marker_share": mass_share(heat, markers) if markers.any() else 0.0, "marker_area": area_share(markers),
                "film_edge_share": mass_share(heat, edges) if edges.any() else 0.0,
                "iou": iou(attended, roi), "dice": dice(attended, roi), "pointing_hit": pointing_game(heat, roi),
                "energy_pointing": mass_share(heat, roi), "roi_area_share": area_share(roi),
                "dense_mass_share": mass, "dense_area_share": area, "dense_margin": mass - area,
                "attended_breast_share": area_share(attended, within=breast),
            }
            for name, value in expected.items():
                got = row[name]
                assert (math.isnan(value) and math.isnan(got)) or got == pytest.approx(value, abs=1e-12), (name, i)


def test_batched_consistency_equals_scipy_and_the_top_region_masks(shared):
    analyses, _, _ = shared
    result = compare_runs(analyses)
    table = result.table.set_index("image_path")
    labels = result.labels
    for path in table.index:
        idx = [a.index_of(path) for a in analyses]
        grid = analyses[0].grid_shape(idx[0])
        within = analyses[0].regions[idx[0]].breast()
        maps = [normalise_map(a.grid_map(i, grid)) for a, i in zip(analyses, idx)]
        for (ka, a), (kb, b) in [((0, maps[0]), (1, maps[1])), ((0, maps[0]), (2, maps[2])), ((1, maps[1]), (2, maps[2]))]:
            name = f"{labels[ka]}_{labels[kb]}"
            va, vb = a[within], b[within]
            rho = math.nan if np.ptp(va) == 0 or np.ptp(vb) == 0 else stats.spearmanr(va, vb).statistic
            got = table.loc[path, f"rho_{name}"]
            assert (math.isnan(rho) and math.isnan(got)) or got == pytest.approx(rho, abs=1e-12)
            ta, tb = top_fraction_mask(a, 0.2, within), top_fraction_mask(b, 0.2, within)
            union = (ta | tb).sum()
            top = (ta & tb).sum() / union if union else math.nan
            got = table.loc[path, f"iou_{name}"]
            assert (math.isnan(top) and math.isnan(got)) or got == top


def test_maps_on_grid_equal_map_to_grid_one_by_one():
    rng = np.random.default_rng(0)
    # upsampled and (for the 256 px model) antialiased down onto the grids; mirrored, padded, cropped
    geometries = [compute_geometry((300, 200), 64), compute_geometry((300, 200), 64, flip=True),
                  compute_crop_geometry((300, 200), 64), compute_geometry((120, 200), 64),
                  compute_geometry((300, 200), 256, flip=True)] * 4
    shapes = [(96, 64), (96, 64), (96, 64), (60, 100), (96, 64)] * 4
    maps = (rng.standard_normal((len(geometries), 4, 4)) * 1e-14).astype(np.float32)
    seen = []
    for idx, batch in maps_on_grid(maps, geometries, shapes, chunk=3):
        for k, i in enumerate(idx):
            assert np.array_equal(batch[k].numpy(), map_to_grid(maps[i], geometries[i], shapes[i]))
            seen.append(int(i))
    assert sorted(seen) == list(range(len(geometries)))


def test_normalise_batch_equals_normalise_map_bit_for_bit():
    rng = np.random.default_rng(1)
    maps = np.stack([rng.standard_normal((9, 7)), np.full((9, 7), 2.5), np.full((9, 7), -1.0),
                     rng.random((9, 7)) * 1e-30, np.zeros((9, 7))])
    batch = normalise_batch(torch.from_numpy(maps)).numpy()
    for k in range(len(maps)):
        assert np.array_equal(batch[k], normalise_map(maps[k]))
    with pytest.raises(ConfigError, match="NaN"):
        normalise_batch(torch.tensor([[[0.0, math.nan]]]))


def test_a_genuine_earlier_project_run_is_measured_against_the_images_facts(tmp_path):
    """Its model saw a centre crop of an 8-bit re-windowing; the masks are still those of the whole image."""
    old = Path.cwd()
    os.chdir(FIXTURES)
    try:
        run = load_run("outputs/seed42/results")
        store = FactStore(tmp_path)
        analysis = analyze_run(run, AnalysisOptions(device="cpu", cache_dir=tmp_path, max_images=4), facts=store)
    finally:
        os.chdir(old)
    assert analysis.geometries[0].crops and store.computed == 4
    for i, path in enumerate(analysis.image_paths):
        facts = compute_image_facts(path, analysis.options.analysis_size)
        assert _bits(analysis.regions[i]) == _bits(facts.regions())
        seen = facts.in_model(analysis.geometries[i]).markers.any()
        # a marker the crop cut away is a fact of the image, but there is nothing of it to paint over
        assert np.isnan(analysis.table.loc[i, "marker_occlusion_drop"]) == (not seen)


@pytest.mark.parametrize("tolerance", [0, 1, 3])
def test_batched_pointing_game_grows_the_roi_like_the_per_map_rule(tolerance):
    from mammography.analysis.localisation import localisation_batch

    rng = np.random.default_rng(tolerance)
    maps = np.round(rng.random((40, 12, 10)) * 4) / 4  # ties at the peak
    rois = rng.random((40, 12, 10)) > 0.85
    got = localisation_batch(normalise_batch(torch.from_numpy(maps)), torch.from_numpy(rois), tolerance=tolerance)
    for k in range(len(maps)):
        expected = pointing_game(maps[k], rois[k], tolerance)
        assert (math.isnan(expected) and math.isnan(got["pointing_hit"][k])) or got["pointing_hit"][k] == expected


def test_facts_found_in_worker_processes_equal_those_found_here(phantoms, tmp_path):
    paths = phantoms["image_path"].tolist()[:6]
    requests = [(p, 64, FactSources()) for p in paths]
    pool = FactStore(tmp_path / "pool")
    assert pool.prefetch(requests, workers=2) == len(paths) and pool.computed == len(paths)
    here = FactStore(None)
    for p in paths:
        a, b = pool.get(p, 64), here.get(p, 64)
        assert (a.n_markers, a.n_film_edges, a.view) == (b.n_markers, b.n_film_edges, b.view)
        for name in ("breast", "markers", "film_edges", "pectoral", "dense_estimate"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert pool.computed == len(paths)  # get() found them all
    assert pool.prefetch(requests, workers=2) == 0 and FactStore(tmp_path / "pool").prefetch(requests, workers=2) == 0
    assert FactStore(None).prefetch(requests, workers=2) == 0  # no cache folder: left to get()
