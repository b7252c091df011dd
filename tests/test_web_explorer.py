"""`mammography explore` on real runs: three seeds trained briefly on phantoms.

The site built here is also what test_web_browser.py drives in Chromium
(:func:`real_site` caches it in the session's temporary folder).
"""

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from mammography.cli import main
from mammography.runs import load_run

SEEDS = (42, 43, 44)


def real_site(tmp_path_factory) -> tuple[Path, list[Path], str]:
    """(site folder, run folders, what the command printed); built once per session.

    Three runs (seeds 42, 43, 44; 1 epoch at 64 px) on 32 phantom images with
    the manifest's split (8 validation images, with expert ROIs), then
    ``mammography explore --run ... --out site``.
    """
    from mammography.synth import generate_dataset
    from mammography.training.train import TrainConfig, train_density

    root = tmp_path_factory.getbasetemp() / "web_real_runs"
    done = root / "done.json"
    if done.is_file():
        info = json.loads(done.read_text())
        return Path(info["site"]), [Path(p) for p in info["runs"]], info["printed"]
    root.mkdir(exist_ok=True)
    csv = generate_dataset(root / "data", n=32, seed=0, size=(128, 104))
    runs = []
    for seed in SEEDS:
        config = TrainConfig(
            csv=csv, outdir=root / "runs", seed=seed, epochs=1, batch_size=8, img_size=64,
            use_manifest_split=True, cache_dir=root / "cache", progress=False, device="cpu", save_best=True,
        )
        runs.append(train_density(config))
    site = root / "site"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["explore", "--run", *map(str, runs), "--out", str(site), "--device", "cpu",
                   "--cache-dir", str(root / "cache"), "--no-progress"])
    assert rc == 0
    done.write_text(json.dumps({"site": str(site), "runs": [str(r) for r in runs], "printed": printed.getvalue()}))
    return site, runs, printed.getvalue()


def read_js(path: Path, prefix: str) -> dict:
    text = path.read_text()
    assert text.startswith(prefix)
    return json.loads(text[len(prefix):].rstrip().rstrip(";").rstrip(")"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    site, runs, printed = real_site(tmp_path_factory)
    data = read_js(site / "data.js", "window.MAMMO_SITE = ")
    maps = {r["k"]: read_js(site / "maps" / f"{r['k']}.js", f'window.mammoMaps("{r["k"]}",') for r in data["images"]}
    return site, [load_run(r) for r in runs], printed, data, maps


def test_command_prints_where_the_site_is(built):
    site, _, printed, data, _ = built
    assert f"wrote {site} ({len(data['images'])} images" in printed
    assert f"open {(site / 'index.html').as_uri()}" in printed


def test_every_validation_image_of_every_run_with_each_seeds_prediction(built):
    _, runs, _, data, maps = built
    by_path = {maps[r["k"]]["meta"]["path"]: r for r in data["images"]}
    expected = set().union(*(set(run.predictions["image_path"]) for run in runs))
    assert set(by_path) == expected and len(expected) == len(data["images"]) > 0
    assert [s["label"] for s in data["seeds"]] == [f"seed {s}" for s in SEEDS]
    for j, run in enumerate(runs):
        assert data["seeds"][j]["metrics"]["acc"] == pytest.approx(run.metrics["acc"], abs=1e-4)
        for _, row in run.predictions.iterrows():
            rec = by_path[row["image_path"]]
            assert rec["t"] == row["y_true"]
            assert rec["p"][j] == row["y_pred"]
            assert rec["c"][j] == pytest.approx(row["confidence"], abs=1e-4)


def test_maps_for_every_layer_and_seed_at_the_models_resolution(built):
    _, _, _, data, maps = built
    assert [x["key"] for x in data["layers"]] == ["features.8", "features.6", "features.4", "fused"]
    for rec in data["images"]:
        layers = maps[rec["k"]]["layers"]
        # 64 px input: features.8 and .6 are 2 x 2, features.4 is 4 x 4; the fusion takes the largest
        assert [(layers[k]["h"], layers[k]["w"]) for k in ("features.8", "features.6", "features.4", "fused")] == [
            (2, 2), (2, 2), (4, 4), (4, 4)]
        assert all(len(layers[k]["m"]) == len(SEEDS) and all(layers[k]["m"]) for k in layers)


def test_attention_numbers_are_in_range_and_agree_with_the_predictions(built):
    _, _, _, data, _ = built
    for rec in data["images"]:
        assert all(0.0 <= s <= 1.0 for s in rec["s"]) and 0.0 <= rec["sp"] <= 1.0
        assert rec["sp"] == pytest.approx(np.mean(rec["s"]), abs=1e-3)
        assert rec["aa"] is None or -1.0 <= rec["aa"] <= 1.0
        differ = len(set(rec["p"])) > 1
        assert (rec["pa"] < 1) == differ
        assert ("predictions differ" in rec["ar"]) == differ
        if differ:
            assert rec["af"] == 0  # differing predictions always need review


def test_expert_roi_outlines_come_from_the_manifest(built):
    _, runs, _, data, maps = built
    with_roi = runs[0].predictions["roi_path"].notna().sum()
    assert with_roi > 0
    outlined = [r for r in data["images"] if r["roi"]]
    assert len(outlined) == with_roi
    for rec in outlined:
        path = maps[rec["k"]]["roi"]
        xy = np.array(re.findall(r"-?\d+(?:\.\d+)?", path), dtype=float).reshape(-1, 2)
        assert xy[:, 0].max() <= rec["w"] and xy[:, 1].max() <= rec["h"] and xy.min() >= 0



def test_attention_numbers_are_those_of_mammography_analyze(built):
    """The explorer shows what the analysis module reports for the same run and images."""
    from mammography.analysis.run_analysis import AnalysisOptions, analyze_run

    site, runs, _, data, maps = built
    cache = site.parent / "cache"
    by_path = {maps[r["k"]]["meta"]["path"]: r["k"] for r in data["images"]}
    analysis = analyze_run(runs[0], AnalysisOptions(device="cpu", cache_dir=cache))
    assert len(analysis.table) == len(runs[0].predictions)
    for _, row in analysis.table.iterrows():
        key = by_path[row["image_path"]]
        details = maps[key]["details"][0]
        assert details["outside breast"] == pytest.approx(row["outside_breast_share"], abs=0.01)
        assert details["border"] == pytest.approx(row["border_share"], abs=0.01)
        assert details["ROI IoU"] == pytest.approx(row["iou"], abs=0.05)
        rec = next(r for r in data["images"] if r["k"] == key)
        assert rec["sf"][0] == int(row["spurious_flag"])
        # the table's score: attention on any off-tissue region, at least the largest single share
        assert rec["s"][0] >= max(row["outside_breast_share"], row["border_share"], row["marker_share"]) - 0.01
