"""report-pack's attention analysis end to end: two seeds trained on one phantom split.

The phantoms' manifest gives every image a ``roi_path`` (its dense-tissue
mask), which training copies into ``val_predictions.csv``, so the pack has
expert regions for the localisation table without extra flags.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mammography.analysis import analyze_run, compare_runs
from mammography.analysis.consistency import select_extremes
from mammography.analysis.run_analysis import AnalysisOptions
from mammography.report.figures import DPI
from mammography.report.pack import MANIFEST_NAME, ReportOptions, report_pack

SEEDS = (42, 43)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(root, [run_dir per seed], cache): both seeds on the manifest's split."""
    from mammography.synth import generate_dataset
    from mammography.training.train import TrainConfig, train_density

    root = tmp_path_factory.mktemp("attention")
    manifest = generate_dataset(root / "phantoms", n=24, seed=1, size=(160, 128))
    cache = root / "cache"
    dirs = [
        Path(train_density(TrainConfig(csv=manifest, outdir=root / "outputs", seed=seed, epochs=1, batch_size=8,
                                       img_size=64, device="cpu", cache_dir=cache, use_manifest_split=True,
                                       progress=False)))
        for seed in SEEDS
    ]
    return root, dirs, cache


def _options(article: Path, cache: Path, **kw) -> ReportOptions:
    return ReportOptions(assets_dir=article / "assets", tex=article / "sections" / "density_model.tex",
                         markdown=article / "02-density.md", per_class=2, device="cpu", cache_dir=cache,
                         progress=False, layers=("features.8",), **kw)


@pytest.fixture(scope="module")
def packed(runs, tmp_path_factory):
    root, dirs, cache = runs
    article = tmp_path_factory.mktemp("article") / "Article"
    result = report_pack(dirs, options=_options(article, cache))
    return article, result, dirs, cache


def test_consistency_files_cover_every_shared_image(packed):
    article, result, dirs, _ = packed
    assets = article / "assets"
    val = [pd.read_csv(d / "val_predictions.csv") for d in dirs]
    shared = set(val[0]["image_path"]) & set(val[1]["image_path"])
    table = pd.read_csv(assets / "consistency.csv")
    assert set(table["image_path"]) == shared and len(table) == len(shared) > 0
    for col in ("y_true", "pred_42", "pred_43", "conf_42", "conf_43", "predictions_agree", "mean_rank_correlation",
                "mean_top_iou", "rho_42_43", "iou_42_43", "agreement", "reasons"):
        assert col in table.columns, col
    # the seeds' predictions in the table are the checkpoints' (the runs' CSVs agree with them)
    for seed, v in zip(SEEDS, val):
        stored = v.set_index("image_path")["y_pred"]
        assert (table.set_index("image_path")[f"pred_{seed}"] == stored.loc[table["image_path"]].to_numpy()).all()
    agree = table["pred_42"] == table["pred_43"]
    assert (table["predictions_agree"] == agree).all()
    assert set(table["agreement"]) <= {"high agreement", "low agreement - requires review"}
    assert (table.loc[~agree, "agreement"] != "high agreement").all()
    summary = json.loads((assets / "consistency_summary.json").read_text())
    assert summary["n_images"] == len(shared)
    assert summary["prediction_agreement_rate"] == pytest.approx(agree.mean())


def test_consistency_figure_columns_are_the_extremes_and_rows_the_seeds(packed):
    from mammography.report.consistency_figure import _short_stem

    article, result, _, _ = packed
    path = article / "assets" / "density_gradcam_consistency.png"
    with Image.open(path) as im:
        assert round(im.info["dpi"][0]) == DPI
    layout = result.layouts["density_gradcam_consistency.png"]
    table = pd.read_csv(article / "assets" / "consistency.csv")
    most, least = select_extremes(table, 3)
    assert len(most) == min(3, len(table)) and len(least) == min(3, len(table) - len(most))
    assert [r.key for r in layout.rows] == [str(s) for s in SEEDS]
    expected = [f"Most {k + 1}" for k in range(len(most))] + [f"Least {k + 1}" for k in range(len(least))]
    assert [h.split(" \u00b7")[0] for h in layout.column_headers] == expected
    assert all(_short_stem(p) in h for p, h in zip(list(most) + list(least), layout.column_headers))
    assert all(r.n_tiles == len(most) + len(least) for r in layout.rows)
    assert not set(most) & set(least)


def test_per_run_attention_files_and_localisation_from_the_phantom_rois(packed):
    article, _, dirs, _ = packed
    for seed, d in zip(SEEDS, dirs):
        folder = article / "assets" / "attention" / f"seed{seed}"
        per_image = pd.read_csv(folder / "attention_per_image.csv")
        val = pd.read_csv(d / "val_predictions.csv")
        assert sorted(per_image["image_path"]) == sorted(val["image_path"])
        for col in ("outside_breast_share", "border_share", "marker_share", "iou", "dice", "pointing_hit",
                    "energy_pointing", "dense_mass_share", "marker_flag"):
            assert col in per_image.columns, col
        assert per_image["iou"].between(0, 1).all() and per_image["pointing_hit"].isin([0, 1]).all()
        loc = pd.read_csv(folder / "localisation_by_class.csv")
        assert loc["group"].astype(str).iloc[0] == "all" and loc["n_images"].iloc[0] == len(val)
        assert loc["iou_mean"].iloc[0] == pytest.approx(per_image["iou"].mean(), abs=1e-5)
        summary = json.loads((folder / "attention_summary.json").read_text())
        assert summary["n_with_roi"] == len(val) and summary["dense_source"] == "roi"


def test_tex_and_markdown_carry_the_tables_and_the_same_numbers(packed):
    article, result, _, _ = packed
    tex = (article / "sections" / "density_model.tex").read_text()
    md = (article / "02-density.md").read_text()
    assert "\\subsection{Where the models look: attention analysis}" in tex
    for label in ("tab:attention-consistency", "tab:attention-spurious", "tab:attention-localisation",
                  "tab:attention-patterns"):
        assert f"\\MammoTable{{{label}}}" in tex, label
        assert f"\\ref{{{label}}}" in tex, label
    assert "}{fig:density-gradcam-consistency}\n" in tex and "\\ref{fig:density-gradcam-consistency}" in tex
    assert "assets/density_gradcam_consistency.png" in tex and "assets/density_gradcam_consistency.png" in md
    summary = json.loads((article / "assets" / "consistency_summary.json").read_text())
    pct = f"{100 * summary['prediction_agreement_rate']:.0f} %"
    sentence = result.attention_summary[0]
    assert sentence.startswith("Across seeds 42 and 43") and f"{pct} of the {summary['n_images']}" in sentence
    assert f"{pct} of the {summary['n_images']}".replace("%", "\\%") in tex
    assert f"{pct} of the {summary['n_images']}" in md
    assert "**Localisation against the expert regions.**" in md and "| Images | n | IoU |" in md


def test_manifest_lists_the_analysis_files_with_hashes(packed):
    import hashlib

    article, _, _, _ = packed
    assets = article / "assets"
    manifest = json.loads((assets / MANIFEST_NAME).read_text())
    listed = {e["path"]: e for e in manifest["assets"]}
    for rel in ("consistency.csv", "consistency_summary.json", "density_gradcam_consistency.png",
                "attention/seed42/attention_per_image.csv", "attention/seed43/attention_maps.npz"):
        assert rel in listed, rel
        assert listed[rel]["sha256"] == hashlib.sha256((assets / rel).read_bytes()).hexdigest()
    assert manifest["attention"]["consistency"]["n_images"] == len(pd.read_csv(assets / "consistency.csv"))
    assert set(manifest["attention"]["runs"]) == {"42", "43"}


def test_report_pack_analysis_equals_the_standalone_analysis(packed):
    """The pack reuses its figure pass; a separate ``analyze_run`` recomputes the maps: same numbers."""
    article, _, dirs, cache = packed
    analyses = [analyze_run(d, AnalysisOptions(cache_dir=cache)) for d in dirs]
    standalone = compare_runs(analyses).table.set_index("image_path").sort_index()
    packed_table = pd.read_csv(article / "assets" / "consistency.csv").set_index("image_path").sort_index()
    np.testing.assert_allclose(packed_table["rho_42_43"], standalone["rho_42_43"], atol=1e-3)
    np.testing.assert_allclose(packed_table["iou_42_43"], standalone["iou_42_43"], atol=0.05)
    per_image = pd.read_csv(article / "assets" / "attention" / "seed42" / "attention_per_image.csv")
    np.testing.assert_allclose(per_image.set_index("image_path").sort_index()["marker_share"],
                               analyses[0].table.set_index("image_path").sort_index()["marker_share"], atol=1e-3)


def test_flagged_run_gets_example_tiles_in_the_report(runs, tmp_path):
    """A run over the spurious thresholds is shown with tiles; tiny thresholds flag any attention outside the breast."""
    from mammography.report.attention import attention_outputs
    from mammography.report.evaluate import evaluate_run
    from mammography.report.provenance import AssetBatch
    from mammography.runs import load_run
    from mammography.analysis.run_analysis import analyze_maps
    from mammography.analysis.spurious import SpuriousThresholds

    _, dirs, cache = runs
    options = _options(tmp_path / "Article", cache)
    ev = evaluate_run(load_run(dirs[0]), options)
    strict = AnalysisOptions(cache_dir=cache, spurious=SpuriousThresholds(outside_breast_ratio=1e-6, max_flag_rate=1e-6))
    analysis = analyze_maps(ev.run, ev.dataset, ev.maps, ev.probs, model=ev.model, options=strict)
    assert analysis.summary["spurious"]["flagged"] and "outside_breast" in analysis.summary["spurious"]["reasons"]
    pack = AssetBatch(options=options, assets_dir=tmp_path / "Article" / "assets")
    entry = attention_outputs(pack, [analysis], [ev], None, [])
    names = [f.path.name for f in entry.figures]
    assert names == ["density_gradcam_spurious_seed42.png"]
    text = " ".join(entry.sentences)
    assert "Flagged for spurious attention: seed 42 for attention outside breast" in text
    # the number comes with its baseline and the margin rule is stated
    assert "The share of heatmap mass outside the breast is " in text
    assert "where a map without preference would put" in text
    assert entry.sentences[-1].startswith("A value counts as different from its baseline only when")
    assert "The run is flagged for spurious attention." in entry.figures[0].caption


def test_no_analysis_removes_the_previous_analysis_files(runs, tmp_path):
    _, dirs, cache = runs
    article = tmp_path / "Article"
    report_pack(dirs, options=_options(article, cache))
    assert (article / "assets" / "consistency.csv").is_file()
    report_pack(dirs, options=_options(article, cache, analysis=False))
    assets = article / "assets"
    assert not (assets / "consistency.csv").exists() and not (assets / "attention").exists()
    assert not (assets / "density_gradcam_consistency.png").exists()
    assert "attention analysis" not in (article / "sections" / "density_model.tex").read_text()
    assert (assets / "density_gradcam_seed42.png").is_file()


def test_faithfulness_flag_adds_the_faithfulness_table(runs, tmp_path):
    _, dirs, cache = runs
    article = tmp_path / "Article"
    result = report_pack(dirs[:1], options=_options(article, cache, faithfulness=True, faithfulness_images=2))
    tex = (article / "sections" / "density_model.tex").read_text()
    assert "\\MammoTable{tab:attention-faithfulness}" in tex
    faith = pd.read_csv(article / "assets" / "attention" / "seed42" / "faithfulness_per_image.csv")
    assert len(faith) == 2
    deletion = [s for s in result.attention_summary if s.startswith("Deleting the most-attended pixels first")]
    # the curve is compared with a random order, and the verdict follows from that comparison
    assert len(deletion) == 1 and "for a random order (difference " in deletion[0]
    assert re.search(r": (inside the random band|faster than random|slower than random)\.$", deletion[0])
    assert any(s.startswith("After randomising the head") for s in result.attention_summary)
    # one run: no consistency, and the report says nothing about it
    assert not (article / "assets" / "consistency.csv").exists()
    assert "tab:attention-consistency" not in tex


def test_no_marker_occlusion_leaves_out_the_occlusion_columns_and_says_so(runs, tmp_path):
    _, dirs, cache = runs
    article = tmp_path / "Article"
    report_pack(dirs[:1], options=_options(article, cache, marker_occlusion=False))
    table = pd.read_csv(article / "assets" / "attention" / "seed42" / "attention_per_image.csv")
    assert "marker_share" in table.columns
    assert not [c for c in table.columns if c.startswith("marker_occlusion")]
    manifest = json.loads((article / "assets" / MANIFEST_NAME).read_text())
    assert manifest["parameters"]["marker_occlusion"] is False
    assert "--no-marker-occlusion" in (article / "sections" / "density_model.tex").read_text()


@pytest.mark.latex
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_article_with_the_attention_section_compiles(packed, tmp_path):
    article, _, _, _ = packed
    work = tmp_path / "Article"
    shutil.copytree(article, work)
    (work / "main.tex").write_text(
        "\\documentclass[twocolumn]{article}\n\\usepackage{graphicx}\n\\begin{document}\n"
        "\\input{sections/density_model}\n\\end{document}\n"
    )
    for _ in range(2):  # second pass resolves the references
        out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=work,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout[-3000:]
    log = (work / "main.log").read_text(errors="replace")
    assert "assets/density_gradcam_consistency.png" in log
    assert "LaTeX Warning: Reference" not in log  # every \\ref of the section resolves
