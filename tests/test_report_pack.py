"""report-pack end to end on a real (tiny) trained run.

The run is trained here with ``train_density`` for one epoch at 64 px on a
phantom set whose validation split is chosen so that class 1 and 2 have 4
validation images, class 3 has 2 (fewer than the 3 requested) and class 4
has none.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mammography.errors import RunError
from mammography.report.figures import COLUMN_WIDTH_IN, DPI, MIN_FONT_PT
from mammography.report.markdown import BEGIN_MARKER, END_MARKER
from mammography.report.pack import MANIFEST_NAME, ReportOptions, report_pack

PER_CLASS = 3


def _tree_hashes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A phantom set and one run trained on it: (root, run_dir, cache_dir)."""
    from mammography.synth import generate_dataset
    from mammography.training.train import TrainConfig, train_density

    root = tmp_path_factory.mktemp("report")
    manifest = generate_dataset(root / "phantoms", n=32, seed=0, size=(160, 128), class_mix=(0.25, 0.375, 0.375, 0.0))
    df = pd.read_csv(manifest)
    first = df.groupby("density_label").patient_id.first()  # one validation patient per present class
    df["split"] = np.where(df.patient_id.isin(first.values), "val", "train")
    class3 = df.index[(df.patient_id == first[3])]
    df = df.drop(class3[2:])  # class 3 keeps 2 validation images
    df.to_csv(manifest, index=False)
    cache = root / "cache"
    run_dir = train_density(TrainConfig(csv=manifest, outdir=root / "outputs" / "mammo_efficientnetb0_density",
                                        seed=42, epochs=1, batch_size=8, img_size=64, save_best=True, device="cpu",
                                        cache_dir=cache, use_manifest_split=True, progress=False))
    return root, Path(run_dir), cache


def _options(article: Path, cache: Path, **kw) -> ReportOptions:
    return ReportOptions(assets_dir=article / "assets", tex=article / "sections" / "density_model.tex",
                         markdown=article / "02-density.md", per_class=PER_CLASS, device="cpu", cache_dir=cache,
                         progress=False, **kw)


@pytest.fixture(scope="module")
def packed(trained, tmp_path_factory):
    """One report pack into an article that already has hand-written Markdown."""
    root, run_dir, cache = trained
    article = tmp_path_factory.mktemp("article") / "Article"
    article.mkdir()
    (article / "02-density.md").write_text(
        "# Density\n\nWritten by hand before.\n\n" + BEGIN_MARKER + "\nstale\n" + END_MARKER + "\n\nAnd after.\n"
    )
    before = _tree_hashes(run_dir)
    result = report_pack([run_dir], options=_options(article, cache))
    return article, result, before, run_dir, cache


def test_pack_writes_the_named_files(packed):
    article, result, _, _, _ = packed
    assets = article / "assets"
    for name in ("density_gradcam_seed42.png", "density_gradcam_layers_seed42.png", MANIFEST_NAME):
        assert (assets / name).is_file(), name
    assert (article / "sections" / "density_model.tex").is_file()
    overlays = sorted(p.name for p in (assets / "gradcam" / "seed42").iterdir())
    # 3 + 3 + 2 selected images, named by class and rank
    assert len(overlays) == 8 and sum(n.startswith("class3_") for n in overlays) == 2
    assert all(re.fullmatch(r"class[1-3]_0[1-3]_.+\.png", n) for n in overlays)
    assert not list(article.rglob("*.tmp"))


def test_figure_is_300_dpi_one_column_and_legible(packed):
    article, result, _, _, _ = packed
    path = article / "assets" / "density_gradcam_seed42.png"
    img = Image.open(path)
    layout = result.layouts["density_gradcam_seed42.png"]
    assert img.info["dpi"][0] == pytest.approx(DPI, abs=0.01)
    assert img.size[0] == round(COLUMN_WIDTH_IN * DPI) and img.size == layout.size_px
    assert layout.min_font_pt >= MIN_FONT_PT
    assert "results \u00b7 seed 42 \u00b7 checkpoint " in layout.title


def test_rows_say_how_many_images_a_class_has(packed):
    _, result, _, run_dir, _ = packed
    layout = result.layouts["density_gradcam_seed42.png"]
    assert layout.row(1).header == "1 (A) \u00b7 almost entirely fatty"
    assert layout.row(1).n_tiles == PER_CLASS and layout.row(2).n_tiles == PER_CLASS
    assert layout.row(3).n_tiles == 2 and layout.row(3).note == f"2 of {PER_CLASS} requested"
    assert layout.row(4).n_tiles == 0 and layout.row(4).message == "no validation images"
    # annotations are the recomputed predictions of the selected images
    preds = pd.read_csv(run_dir / "val_predictions.csv")
    sel = result.selections["mammo_efficientnetb0_density/results"]
    for label in (1, 2, 3):
        for i, text in zip(sel[label].indices, layout.row(label).labels):
            row = preds.iloc[i]
            assert text == f"GT {row.y_true} \u00b7 Pred {row.y_pred} \u00b7 {row.confidence:.2f}"
    layers = result.layouts["density_gradcam_layers_seed42.png"]
    assert [r.key for r in layers.rows] == ["features.4", "features.6", "features.8", "fused"]


def test_tiles_show_the_whole_image_unflipped_with_the_heatmap_aligned(trained):
    """A model-space heatmap equal to the breast mask lands on the breast of the displayed original image."""
    from mammography.report.display import DisplayImages
    from mammography.report.evaluate import evaluate_run
    from mammography.runs import load_run

    _, run_dir, cache = trained
    run = load_run(run_dir)
    ev = evaluate_run(run, ReportOptions(device="cpu", cache_dir=cache, progress=False, layers=("features.8",)))
    table = run.predictions
    images = DisplayImages()
    checked = 0
    for laterality in ("L", "R"):
        i = int(np.flatnonzero(table["laterality"].to_numpy() == laterality)[0])
        mask = np.asarray(Image.open(table.loc[i, "breast_mask_path"]), dtype=np.float32) > 0
        geometry = ev.dataset.geometry(i)
        assert geometry.flipped == (laterality == "R")  # right breasts are mirrored for the model
        model_mask = geometry.to_model(mask.astype(np.float32))
        tile = images.tile(ev, i, heatmap=model_mask)
        assert tile.image.shape == mask.shape  # whole image, original size (<= 1024 px), aspect kept
        inside = tile.heatmap > 0.5
        iou = (inside & mask).sum() / (inside | mask).sum()
        assert iou > 0.9, (laterality, iou)
        # the picture is not mirrored: the breast (bright) is where the original mask says
        assert tile.image[mask].mean() > tile.image[~mask].mean() + 0.1
        flipped_iou = (inside & mask[:, ::-1]).sum() / (inside | mask[:, ::-1]).sum()
        assert flipped_iou < iou - 0.2
        checked += 1
    assert checked == 2


def test_predictions_agree_and_run_dir_is_untouched(packed):
    _, result, before, run_dir, _ = packed
    (check,) = result.checks
    assert check.n_images == 10 and check.n_disagree == 0 and check.max_prob_diff < 1e-4
    assert _tree_hashes(run_dir) == before


def test_manifest_lists_every_asset_with_matching_hashes(packed):
    article, result, _, run_dir, _ = packed
    manifest = json.loads((article / "assets" / MANIFEST_NAME).read_text())
    from mammography import __version__

    assert manifest["version"] == __version__
    assert manifest["parameters"]["per_class"] == PER_CLASS and manifest["parameters"]["select"] == "confident"
    ckpt = hashlib.sha256((run_dir / "best_model.pth").read_bytes()).hexdigest()
    (run,) = manifest["runs"]
    assert run["checkpoint_sha256"] == ckpt and run["seed"] == 42 and "git_commit" in run
    paths = set()
    for entry in manifest["assets"]:
        file = (article / "assets" / entry["path"]).resolve()
        assert hashlib.sha256(file.read_bytes()).hexdigest() == entry["sha256"], entry["path"]
        paths.add(file)
        if entry["kind"] not in ("latex", "markdown"):
            assert entry["checkpoint_sha256"] == ckpt and entry["seed"] == 42
            assert entry["source_run"] == run_dir.absolute().as_posix()
    written = {p.resolve() for p in result.written} - {(article / "assets" / MANIFEST_NAME).resolve()}
    assert written == paths


def test_tex_and_markdown_reference_the_figures(packed):
    article, _, _, _, _ = packed
    tex = (article / "sections" / "density_model.tex").read_text()
    assert r"\MammoFigure{0}{assets/density_gradcam_seed42.png}{" in tex
    assert r"}{fig:density-gradcam-seed42}" in tex and r"\MammoTable{tab:density-seeds}" in tex
    assert "most confident correct predictions" in tex and f"2 of {PER_CLASS} requested" in tex
    assert "no validation images" in tex
    md = (article / "02-density.md").read_text()
    assert md.startswith("# Density\n\nWritten by hand before.\n\n" + BEGIN_MARKER)
    assert md.endswith(END_MARKER + "\n\nAnd after.\n") and "stale" not in md
    assert "](assets/density_gradcam_seed42.png)" in md and "| 42 |" in md


def test_same_inputs_give_identical_bytes(packed):
    """The first pack swept the run and stored its record; this one reads the record; one more computes
    everything anew without any cache: the same files, byte for byte."""
    article, result, _, run_dir, cache = packed
    first = _tree_hashes(article)
    records = sorted((cache / "records").rglob("record.json"))
    assert len(records) == 1  # the first pack's sweep, of every layer it draws
    assert json.loads(records[0].read_text())["provenance"]["layers"] == ["features.4", "features.6", "features.8"]
    again = report_pack([run_dir], options=_options(article, cache))
    assert _tree_hashes(article) == first
    assert [p.name for p in again.written] == [p.name for p in result.written]
    report_pack([run_dir], options=_options(article, None))
    assert _tree_hashes(article) == first
    assert sorted((cache / "records").rglob("record.json")) == records


@pytest.mark.latex
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_article_with_the_generated_section_compiles(packed, tmp_path):
    article, _, _, _, _ = packed
    work = tmp_path / "Article"
    shutil.copytree(article, work)
    (work / "main.tex").write_text(
        "\\documentclass[twocolumn]{article}\n\\usepackage{graphicx}\n\\begin{document}\n"
        "See Figure~\\ref{fig:density-gradcam-seed42}.\n\\input{sections/density_model}\n\\end{document}\n"
    )
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=work,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
    log = (work / "main.log").read_text(errors="replace")
    assert "assets/density_gradcam_seed42.png" in log and "assets/density_gradcam_layers_seed42.png" in log
    if shutil.which("pdfimages"):
        listing = subprocess.run(["pdfimages", "-list", "main.pdf"], cwd=work, capture_output=True, text=True)
        images = [ln for ln in listing.stdout.splitlines()[2:] if ln.strip() and " image " in ln]
        assert len(images) >= 2
    else:
        assert (work / "main.pdf").read_bytes().count(b"/Subtype /Image") >= 2


def _tamper(run_dir: Path, dest: Path) -> tuple[Path, str]:
    """Copy the run and make one CSV row claim a confident prediction the checkpoint does not make."""
    copy = dest / "results_tampered"
    shutil.copytree(run_dir, copy)
    csv = copy / "val_predictions.csv"
    df = pd.read_csv(csv)
    wrong = int(df.loc[0, "y_pred"]) % 4 + 1
    df.loc[0, "y_pred"] = wrong
    df.loc[0, "confidence"] = 1.0
    for k, col in enumerate(["p_A", "p_B", "p_C", "p_D"], start=1):
        df.loc[0, col] = 1.0 if k == wrong else 0.0
    df.to_csv(csv, index=False)
    return copy, str(df.loc[0, "image_path"])


def test_disagreement_is_counted_and_named(trained, tmp_path):
    _, run_dir, cache = trained
    copy, image = _tamper(run_dir, tmp_path)
    metrics_file = copy / "metrics" / "val_metrics.json"
    metrics_file.write_text(json.dumps({**json.loads(metrics_file.read_text()), "acc": 0.123}))
    result = report_pack([copy], options=_options(tmp_path / "Article", cache))
    (check,) = result.checks
    assert check.n_disagree == 1 and check.disagreeing == (image,)
    assert "1 of 10 validation images disagree" in check.message() and image in check.message()
    manifest = json.loads((tmp_path / "Article" / "assets" / MANIFEST_NAME).read_text())
    assert manifest["runs"][0]["n_disagree"] == 1
    tex = (tmp_path / "Article" / "sections" / "density_model.tex").read_text()
    assert "1 of 10 predictions recomputed from the checkpoint differ from the run's stored val\\_predictions.csv" in tex
    # the table shows the recomputed metrics, and the stored ones beside them since they read differently
    assert "Rows marked (stored)" in tex
    stored_row = next(line for line in tex.splitlines() if line.startswith("42 (stored)"))
    assert "0.123" in stored_row


def _cli(*args, cwd, cache, monkeypatch, capsys):
    """Run the real command line in this process (same parser, handler and exit codes as the console script)."""
    from mammography.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MAMMOGRAPHY_CACHE", str(cache))
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_strict_stops_before_writing_anything(trained, tmp_path, monkeypatch, capsys):
    _, run_dir, cache = trained
    copy, image = _tamper(run_dir, tmp_path)
    code, _, err = _cli("report-pack", "--run", str(copy), "--strict", "--device", "cpu", "--no-progress",
                        cwd=tmp_path, cache=cache, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2, err
    errors = [ln for ln in err.splitlines() if ln.startswith("mammography report-pack: error")]
    assert len(errors) == 1 and "disagree" in errors[0] and image in errors[0]
    assert not (tmp_path / "Article").exists()


def test_seed_workflow_verbatim_and_clear_errors(trained, tmp_path, monkeypatch, capsys):
    root, run_dir, cache = trained
    os.symlink(root / "outputs", tmp_path / "outputs")
    kw = dict(cwd=tmp_path, cache=cache, monkeypatch=monkeypatch, capsys=capsys)
    code, out, err = _cli("report-pack", "--", "--run", run_dir.name, "--assets-dir", "Article/assets",
                          "--device", "cpu", "--no-progress", **kw)
    assert code == 0, err
    assert (tmp_path / "Article" / "assets" / "density_gradcam_seed42.png").is_file()
    assert (tmp_path / "Article" / "sections" / "density_model.tex").is_file()
    assert (tmp_path / "Article" / "02-density.md").is_file()
    assert "density_gradcam_seed42.png" in out
    tex = (tmp_path / "Article" / "sections" / "density_model.tex").read_text()
    assert "% Regenerate with: mammography report-pack --run results --assets-dir Article/assets" in tex

    code, _, err = _cli("report-pack", "--run", "results_999", **kw)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "results_999" in err

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "best_model.pth").unlink()
    code, _, err = _cli("report-pack", "--run", str(broken), "--assets-dir", "B/assets", **kw)
    assert code == 2 and "best_model.pth" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "B").exists()


def test_cross_validation_folds_and_table(trained, tmp_path):
    _, run_dir, cache = trained
    cv_root = tmp_path / "results_k2_seed42"
    for k in (1, 2):
        shutil.copytree(run_dir, cv_root / f"fold_{k}" / "results")
    (cv_root / "cv_summary.json").write_text(json.dumps({"seed": 42, "k": 2}))
    article = tmp_path / "Article"
    result = report_pack(cv_runs=[cv_root], options=_options(article, cache))
    for k in (1, 2):
        assert (article / "assets" / "results_k2_seed42" / f"fold_{k}_gradcam.png").is_file()
        layout = result.layouts[f"results_k2_seed42/fold_{k}_gradcam.png"]
        assert layout.row(4).message == "no validation images" and f"fold_{k}" in layout.title
    tex = (article / "sections" / "density_model.tex").read_text()
    assert r"{assets/results_k2_seed42/fold_1_gradcam.png}" in tex and "2-fold cross-validation" in tex
    # identical folds: mean = the fold value, sd = 0
    acc = result.checks and json.loads((article / "assets" / MANIFEST_NAME).read_text())["cv_runs"][0]
    value = acc["folds"][0]["metrics_recomputed"]["acc"]
    assert f"{value:.3f}\\\\\\ensuremath{{\\pm}} 0.000" in tex  # the sd under the mean, a narrow column
    md = (article / "02-density.md").read_text()
    assert f"| **Mean ± sd** | **{value:.3f} ± 0.000** |" in md and "fold_2_gradcam.png" in md

    # a later pack without the CV run removes the fold figures the previous pack listed
    (article / "assets" / "notes.png").write_bytes(b"not ours")
    report_pack([run_dir], options=_options(article, cache))
    assert not (article / "assets" / "results_k2_seed42").exists()
    assert (article / "assets" / "notes.png").read_bytes() == b"not ours"
    assert "fold_1_gradcam" not in (article / "sections" / "density_model.tex").read_text()


def test_bad_parameters_fail_before_loading(tmp_path):
    from mammography.errors import ConfigError

    with pytest.raises(ConfigError, match="select"):
        report_pack(["x"], options=ReportOptions(select="best"))
    with pytest.raises(ConfigError, match="colour map"):
        report_pack(["x"], options=ReportOptions(colormap="nope"))
    with pytest.raises(ConfigError, match="CAM method"):
        report_pack(["x"], options=ReportOptions(method="nope"))
    with pytest.raises(RunError, match="not found"):
        report_pack([tmp_path / "nothing"], options=ReportOptions(device="cpu"))


# --------------------------------------------------------------------------- all old or all new


def _article_state(article: Path) -> dict:
    """Relative path -> SHA-256 of every file of an article folder (lock files aside)."""
    return {p.relative_to(article).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(article.rglob("*")) if p.is_file() and not p.name.endswith(".mmlock")}


def _pack_matches_manifest(article: Path) -> bool:
    """Every output the manifest lists has its hash, and no other figure or data file is in the assets."""
    assets = article / "assets"
    manifest = json.loads((assets / MANIFEST_NAME).read_text())
    listed = {(assets / e["path"]).resolve(): e["sha256"] for e in manifest["assets"]}
    for path, digest in listed.items():
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return False
    present = {p.resolve() for p in assets.rglob("*") if p.is_file() and not p.name.startswith(".")}
    return present - {(assets / MANIFEST_NAME).resolve()} == {p for p in listed if assets.resolve() in p.parents}


def test_pack_killed_at_every_commit_step_is_the_old_or_the_new_pack(trained, tmp_path):
    """Pack A, then pack B (fewer overlays: stale files to remove) committed by a child process that is
    killed with SIGKILL before each step in turn; the next writer's lock repairs the folder."""
    import dataclasses

    from _interrupt import COMMIT_CHILD, run_until_paused
    from mammography.atomic import OutputLock

    _, run_dir, cache = trained
    x, y = tmp_path / "x" / "Article", tmp_path / "y" / "Article"
    report_pack([run_dir], options=_options(x, cache, analysis=False))
    shutil.copytree(x.parent, tmp_path / "pristine")
    shutil.copytree(x.parent, y.parent)
    report_pack([run_dir], options=dataclasses.replace(_options(y, cache, analysis=False), per_class=1,
                                                       select="errors"))
    old_state, new_state = _article_state(x), _article_state(y)
    assert old_state != new_state and _pack_matches_manifest(x) and _pack_matches_manifest(y)

    # pack B's batch as report_pack stages it: outputs in manifest order, the manifest last
    new_manifest = json.loads((y / "assets" / MANIFEST_NAME).read_text())
    order = [e["path"] for e in new_manifest["assets"]] + [MANIFEST_NAME]
    kept = {(x / "assets" / p).resolve() for p in order}
    old_manifest = json.loads((x / "assets" / MANIFEST_NAME).read_text())
    stale = [str((x / "assets" / e["path"]).resolve()) for e in old_manifest["assets"]
             if e["kind"] not in ("latex", "markdown") and (x / "assets" / e["path"]).resolve() not in kept]
    assert stale  # the new pack drops overlays: stale files are part of the commit
    spec = {"folders": [str(x / "assets")], "trees": [],
            "files": [str(x / "sections" / "density_model.tex"), str(x / "02-density.md")],
            "add": [[str((x / "assets" / p).resolve()), str((y / "assets" / p).resolve())] for p in order],
            "remove": [[p, str(x / "assets")] for p in stale]}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))

    outcomes = []
    for step in range(200):
        shutil.rmtree(x.parent)
        shutil.copytree(tmp_path / "pristine", x.parent)
        if not run_until_paused(COMMIT_CHILD, [str(spec_path)], step):
            break
        with OutputLock(folders=[x / "assets"], files=spec["files"]):  # what the next report-pack does first
            pass
        state = _article_state(x)
        assert state in (old_state, new_state), step
        assert _pack_matches_manifest(x), step
        outcomes.append("new" if state == new_state else "old")
    n_files = len(order)
    print(f"report-pack commit of {n_files} files and {len(stale)} stale removals killed before each of "
          f"{len(outcomes)} steps: {outcomes.count('old')} old pack, {outcomes.count('new')} new pack, 0 mixed")
    assert len(outcomes) == 2 * n_files + len(stale) + 2  # temps, journal, renames, removals, journal removal
    assert outcomes == ["old"] * (n_files + 1) + ["new"] * (n_files + len(stale) + 1)


def _cli_argv(run_dir, article: Path, cache, *extra) -> list[str]:
    return [sys.executable, "-m", "mammography", "report-pack", "--run", str(run_dir),
            "--assets-dir", str(article / "assets"), "--tex", str(article / "sections" / "density_model.tex"),
            "--markdown", str(article / "02-density.md"), "--per-class", "1", "--no-analysis",
            "--device", "cpu", "--cache-dir", str(cache), "--no-progress", *extra]


def test_second_writer_fails_and_the_next_run_repairs_a_killed_pack(packed, tmp_path):
    from _interrupt import kill_9, start_paused

    packed_article, _, _, run_dir, cache = packed
    article = tmp_path / "Article"
    shutil.copytree(packed_article, article)  # a complete earlier pack (with the attention analysis)
    # a new pack stops just before its manifest goes in: figures new, stale files gone, manifest old
    writer = start_paused(_cli_argv(run_dir, article, cache, "--select", "errors", "--colormap", "turbo"),
                          f"move {MANIFEST_NAME}")
    try:
        other = subprocess.run(_cli_argv(run_dir, article, cache), capture_output=True, text=True, timeout=600)
        assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
        assert f"being written by another mammography process (pid {writer.pid}" in other.stderr
    finally:
        kill_9(writer)
    assert not _pack_matches_manifest(article)  # killed mid-commit: the mix the journal exists for
    missing_run = _cli_argv(tmp_path / "no_such_run", article, cache)
    repair = subprocess.run(missing_run, capture_output=True, text=True, timeout=600)
    assert repair.returncode == 2 and "no_such_run" in repair.stderr
    assert _pack_matches_manifest(article)
    manifest = json.loads((article / "assets" / MANIFEST_NAME).read_text())
    assert manifest["parameters"]["colormap"] == "turbo"  # completed: the new pack
    assert not [p for p in article.rglob("*") if p.name.endswith((".mmtmp", ".mmjournal", ".mmlock"))]


def test_full_disk_during_the_commit_is_one_line_and_changes_nothing(packed, tmp_path):
    import resource
    import signal

    packed_article, _, _, run_dir, cache = packed
    article = tmp_path / "Article"
    shutil.copytree(packed_article, article)  # a complete earlier pack
    before = _article_state(article)

    def small_disk():  # writes past 40 kB fail with EFBIG, as writes to a full disk fail with ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    full = subprocess.run(_cli_argv(run_dir, article, cache, "--colormap", "turbo"), capture_output=True,
                          text=True, timeout=600, preexec_fn=small_disk)
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    errors = [line for line in full.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "too large" in errors[0]
    assert _article_state(article) == before  # the previous pack, whole; no temporary file left


def test_shipped_json_names_no_local_cache_folder(packed):
    article, _, _, _, cache = packed
    texts = [p.read_text() for p in (article / "assets").rglob("*.json")]
    assert any("attention" in p.as_posix() for p in (article / "assets").rglob("*.json"))
    for text in texts:
        assert str(cache) not in text
