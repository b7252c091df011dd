"""Run-level attention analysis on real phantom DICOMs and real (untrained) EfficientNet-B0 run folders.

The run folders are written the way the earlier project wrote them (a state
dict, summary.json, val_predictions.csv, metrics JSON), from untrained models:
enough to check files, shapes, round trips, detection of burned-in markers
and the figures and tables, in seconds. What trained models must show is in
``test_analysis_phantoms.py``.
"""

import json
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _runs import phantom_rows, write_run

from mammography.analysis import AnalysisOptions, analyze_run, compare_runs, load_run_analysis
from mammography.analysis.consistency import HIGH_AGREEMENT
from mammography.analysis.facts import compute_image_facts
from mammography.analysis.result import ANALYSIS_FILES
from mammography.analysis.spurious import parse_bbox
from mammography.errors import ConfigError
from mammography.runs import load_run

IMG_SIZE = 64


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return phantom_rows(tmp_path_factory.mktemp("phantoms"), n=16, seed=3, size=(160, 128), shortcut=4,
                        class_mix=(0.25, 0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def runs(phantoms, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [write_run(root / f"results_{s}", phantoms, seed=s, img_size=IMG_SIZE) for s in (42, 43)]


@pytest.fixture(scope="module")
def analyses(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    options = AnalysisOptions(device="cpu", batch_size=8, faithfulness=True, faithfulness_images=2,
                              faithfulness_steps=4, sanity=True, sanity_images=2)
    return [analyze_run(r, options, out_dir=out / r.name) for r in runs], out


def test_analyze_run_measures_every_validation_image_and_writes_its_files(analyses, phantoms):
    (a, _), out = analyses
    assert len(a.table) == len(phantoms)
    for name in ANALYSIS_FILES.values():
        assert (out / "results_42" / name).is_file(), name
    for kind in ("outside_breast", "border", "marker"):
        share = a.table[f"{kind}_share"]
        assert share.between(0, 1).all()
    # the phantom's ROI is its dense tissue, so localisation and patterns use it ("auto" finds synth.json)
    assert a.summary["n_with_roi"] == len(phantoms) and a.summary["dense_source"] == "roi"
    assert a.table["iou"].notna().all() and a.table["pointing_hit"].isin([0.0, 1.0]).all()
    assert list(a.localisation["group"])[0] == "all"
    assert a.maps.shape == (len(phantoms), 2, 2)  # 64 px input / 32
    assert a.faithfulness.deletion.shape == (2, 5)
    assert a.sanity.correlations.shape == (4, 2)
    summary = json.loads((out / "results_42" / ANALYSIS_FILES["summary"]).read_text())
    assert summary["run"]["seed"] == 42 and summary["spurious"]["thresholds"]["marker_enrichment"] == 3.0
    assert summary["faithfulness"]["n_images"] == 2 and "passed" in summary["sanity"]


def test_written_analysis_reads_back_identically(analyses):
    (a, _), out = analyses
    b = load_run_analysis(out / "results_42")
    assert np.array_equal(a.maps, b.maps)
    assert a.geometries == b.geometries
    for ra, rb in zip(a.regions, b.regions):
        assert np.array_equal(ra.breast(), rb.breast()) and np.array_equal(ra.markers(), rb.markers())
    assert np.allclose(a.grid_map(3), b.grid_map(3))
    pd.testing.assert_frame_equal(
        a.table[["image_path", "marker_share"]], b.table[["image_path", "marker_share"]], check_exact=False
    )


def test_markers_are_found_in_the_pixels_without_the_manifest_box(runs, phantoms):
    """The shortcut squares lie where the manifest says although detection never saw artifact_bbox."""
    from mammography.data.dataset import MammogramDataset

    run = load_run(runs[0])
    boxed = phantoms[phantoms["artifact_bbox"].notna()]
    assert len(boxed) >= 2
    ds = MammogramDataset(boxed["image_path"].tolist(), img_size=128)
    for i, (_, row) in enumerate(boxed.iterrows()):
        prepared = ds.prepared(i)
        found = compute_image_facts(row["image_path"], 160)  # grid = original size here
        assert found.shape == (160, 128)
        r0, c0, r1, c1 = parse_bbox(row["artifact_bbox"])
        markers = found.markers
        assert markers[r0:r1, c0:c1].mean() > 0.9
        assert found.n_markers >= 2  # the square and the burned-in "L CC" text
        # in model space the mask covers the square's bright pixels as the model sees them (flipped for R)
        bright = prepared.square > 0.8
        assert found.in_model(prepared.geometry).occlusion()[bright & ~_breast_in_square(row, prepared)].all()
        breast = np.asarray(Image.open(row["breast_mask_path"])) > 0
        assert (markers & breast).mean() < 0.01
    del run


def _breast_in_square(row, prepared):
    breast = np.asarray(Image.open(row["breast_mask_path"])) > 0
    return prepared.geometry.to_model(breast.astype(np.float32)) > 0.01


def test_a_run_compared_with_itself_agrees_everywhere(analyses):
    (a, b), _ = analyses
    same = compare_runs([a, a.__class__(**{**a.__dict__, "seed": 7})])
    assert (same.table["mean_rank_correlation"].dropna() > 0.999).all()
    assert same.summary["prediction_agreement_rate"] == 1.0
    assert set(same.table["agreement"]) <= {HIGH_AGREEMENT, "low agreement - requires review"}
    assert not same.table["reasons"].str.contains("regions").any()
    two = compare_runs([a, b])
    assert two.labels == ["42", "43"] and len(two.table) == len(a.table)
    assert {"pred_42", "pred_43", "conf_42", "rho_42_43", "iou_42_43"} <= set(two.table.columns)
    with pytest.raises(ConfigError):
        compare_runs([a])


def test_consistency_figure_and_tables(analyses):
    from mammography.report.analysis_tables import render_analysis_tables
    from mammography.report.consistency_figure import render_consistency_figure, render_spurious_figure

    (a, b), _ = analyses
    result = compare_runs([a, b])
    png, layout, caption = render_consistency_figure(result, n=2)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png == render_consistency_figure(result, n=2)[0]  # deterministic bytes
    # shaped to fit a page: one row per seed, one column per image (the 2 most, then the 2 least consistent)
    assert layout.dpi == 300 and layout.n_columns == 4 and len(layout.rows) == 2
    assert [r.key for r in layout.rows] == ["42", "43"]
    assert [h.split(" ")[0] for h in layout.column_headers] == ["Most", "Most", "Least", "Least"]
    assert all(r.n_tiles == 4 and len(r.labels) == 4 for r in layout.rows)
    assert layout.min_font_pt >= 6.0
    assert "seeds 42, 43" in caption and "red frame" in caption and "chance" in caption
    spng, slayout, scaption = render_spurious_figure(a, n=3)
    assert spng[:4] == b"\x89PNG" and slayout.rows[0].n_tiles == 3 and "seed 42 model" in scaption

    text = render_analysis_tables([a, b], result)
    keys = [t.key for t in text.tables]
    assert keys == ["consistency", "spurious", "localisation", "patterns", "faithfulness"]
    assert r"\MammoTable{tab:attention-consistency}" in text.latex and r"\ensuremath{\rho}" in text.latex
    code = text.latex.split(r"\MammoTable{", 1)[1]
    assert "_" not in code.replace(r"\_", "").replace("tab:attention-", "").split("}{", 1)[1][:2000]
    assert "| Seed | Outside breast | Border band |" in text.markdown
    assert text.latex.count("\n\\MammoTable{") == 5 and text.markdown.count("**") == 2 * 5
    assert r"\MammoSetLayout{auto}" in text.latex  # a stand-alone fragment carries its layout macros


def test_roi_mask_that_does_not_fit_the_image_is_a_clear_error(runs, phantoms, tmp_path):
    bad = tmp_path / "bad_roi.png"
    Image.fromarray(np.zeros((50, 200), np.uint8)).save(bad)
    rows = load_run(runs[0]).predictions.head(1).assign(roi_path=str(bad))
    run = load_run(runs[0])
    run.predictions = rows
    with pytest.raises(ConfigError, match="bad_roi.png"):
        analyze_run(run, AnalysisOptions(device="cpu"))


def test_cli_analyze_two_runs(runs, tmp_path, capsys):
    from mammography.cli import main

    out = tmp_path / "out"
    code = main(["analyze", "--run", str(runs[0]), str(runs[1]), "--out", str(out), "--device", "cpu", "--no-progress",
                 "--max-images", "6", "--cache-dir", str(tmp_path / "cache")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "consistency:" in printed and "seed 42:" in printed and f"wrote {out / 'consistency.csv'}" in printed
    for name in ("consistency.csv", "consistency_summary.json", "density_gradcam_consistency.png",
                 "density_gradcam_spurious_seed42.png", "attention_tables.tex", "attention_tables.md",
                 "42/attention_per_image.csv", "43/attention_summary.json"):
        assert (out / name).is_file(), name
    assert len(pd.read_csv(out / "consistency.csv")) == 6
    assert main(["analyze", "--run", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nope" in err
