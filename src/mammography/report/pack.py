"""``report-pack``: regenerate every article figure and table from the current checkpoints.

For every run (and every fold of a cross-validation run) :func:`report_pack`

1. loads the run (:func:`mammography.report.evaluate.load_inputs`);
2. gets the predictions and maps of every layer it draws from
   :func:`mammography.cam.sweep.run_maps`: a stored sweep record of the same
   checkpoint, preprocessing and images when there is one (an earlier
   ``explain``, ``analyze``, ``explore`` or pack), else one batched sweep over
   all validation images, stored for the next command. The same pass gives
   the maps and the model's probabilities, so checking the predictions costs
   nothing extra (:mod:`mammography.report.evaluate`);
3. compares the recomputed predictions with ``val_predictions.csv``: an image
   *disagrees* when any class probability differs by more than
   ``prob_tolerance`` or the stored prediction is beaten by more than
   ``prob_tolerance`` (a near-tie flipping under a different precision is not
   a disagreement). With ``strict`` any disagreement stops the pack before
   anything is written;
4. selects samples per true class from the *recomputed* predictions
   (:func:`mammography.analysis.selection.select_per_class`) and draws the
   class-grid figure, the per-sample overlays and the layer-wise figure
   (:mod:`mammography.report.display`, captions from
   :mod:`mammography.report.captions`); PNGs are encoded in worker threads;
5. recomputes the metrics from the recomputed predictions (the table can then
   never show numbers of a model that no longer exists).

With ``analysis`` (the default) the seed runs' maps and probabilities then go
to the attention analysis (:mod:`mammography.report.attention`): cross-seed
consistency, spurious attention, localisation, patterns, optionally
faithfulness. Then it renders the LaTeX section and the Markdown block, writes
``report_manifest.json`` (every output with its SHA-256, the source run,
checkpoint hash, seed, git commit, tool version and parameters;
:mod:`mammography.report.provenance`) and commits all files at once
(:class:`~mammography.atomic.FileBatch`). The parameters are
:class:`~mammography.report.options.ReportOptions`. Figures the
previous pack in the same assets folder listed in its manifest but this pack
no longer makes (a dropped run, fewer examples) are removed. Input run
directories are only read.

Outputs (``assets`` = ``assets_dir``)::

    assets/density_gradcam_seed{SEED}.png           class grid per seed run
    assets/density_gradcam_layers_seed{SEED}.png    layer-wise figure per seed run
    assets/gradcam/seed{SEED}/class{L}_{R}_{stem}.png   per-sample overlays
    assets/{CV_ID}/fold_{K}_gradcam.png             class grid per fold (CV_ID: the CV folder's name,
                                                    other characters than letters, digits, '._-' as '-')
    assets/density_gradcam_consistency.png, consistency.csv, consistency_summary.json,
    assets/density_gradcam_spurious_seed{SEED}.png, assets/attention/seed{SEED}/...
                                                    the attention analysis (:mod:`mammography.report.attention`)
    assets/report_manifest.json
    <tex>                                           LaTeX section
    <markdown>                                      block between markers replaced
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mammography import __version__
from mammography.analysis.selection import describe_strategy
from mammography.atomic import OutputLock
from mammography.cam.sweep import DEFAULT_LAYERS, canonical_method
from mammography.errors import RunError
from mammography.report.captions import (
    CLASSES,
    class_short,
    cv_caption,
    grid_caption,
    grid_title,
    layer_caption,
    short_hash,
)
from mammography.report.content import CVEntry, FigureRef, ReportContent, SeedEntry
from mammography.report.display import grid_rows, layer_rows, select_examples
from mammography.report.evaluate import EvaluatedRun, evaluate_run, load_inputs
from mammography.report.figures import COLUMN_WIDTH_IN, FigureLayout, class_grid_figure, layer_grid_figure
from mammography.report.latex import render_latex
from mammography.report.markdown import render_markdown_block, update_markdown
from mammography.report.options import (
    DEFAULT_ASSETS_DIR,
    DEFAULT_MARKDOWN,
    DEFAULT_TEX,
    ReportOptions,
    command_line,
)
from mammography.report.overlay import png_bytes
from mammography.report.provenance import MANIFEST_NAME, AssetBatch, clean_json, previous_assets, run_record
from mammography.report.tables import metric_table
from mammography.runs import PredictionCheck
from mammography.training.metrics import degenerate_warnings

__all__ = [
    "DEFAULT_ASSETS_DIR",
    "DEFAULT_LAYERS",
    "DEFAULT_MARKDOWN",
    "DEFAULT_TEX",
    "MANIFEST_NAME",
    "EvaluatedRun",
    "ReportOptions",
    "ReportResult",
    "command_line",
    "evaluate_run",
    "report_pack",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportResult:
    """What :func:`report_pack` wrote.

    Attributes
    ----------
    written : every file written, in order.
    assets_dir, tex, markdown, manifest : the main outputs.
    checks : one prediction check per run and fold.
    layouts : asset path (relative to ``assets_dir``, POSIX) -> :class:`FigureLayout` of each figure.
    selections : run id -> class label -> :class:`~mammography.analysis.selection.ClassSelection`.
    attention_summary : the attention analysis's summary sentences (empty without it).
    attention_seconds : wall time of the attention analysis (its figures and tables included).
    warnings : one line per run whose output does not depend on the image (collapsed predictions).
    content : what the LaTeX section and the Markdown block show (figures, captions, tables).
    """

    written: tuple[Path, ...]
    assets_dir: Path
    tex: Path
    markdown: Path
    manifest: Path
    checks: tuple[PredictionCheck, ...]
    layouts: dict = field(default_factory=dict)
    selections: dict = field(default_factory=dict)
    attention_summary: tuple[str, ...] = ()
    attention_seconds: float = 0.0
    warnings: tuple[str, ...] = ()
    content: ReportContent | None = None


def report_pack(
    runs=(),
    cv_runs=(),
    options: ReportOptions | None = None,
    *,
    outputs_root: str | Path = "outputs",
    store=None,
    sweep_layers=(),
) -> ReportResult:
    """Regenerate the Grad-CAM figures, tables, LaTeX and Markdown from trained runs.

    Parameters
    ----------
    runs : ``--run`` specs: run directories, names relative to the default
        outputs folder (``results_4`` -> ``outputs/mammo_efficientnetb0_density/results_4``)
        or globs (see :func:`mammography.runs.resolve_runs`).
    cv_runs : ``--cv-run`` specs: cross-validation roots (same forms).
    options : everything else (:class:`ReportOptions`).
    outputs_root : the outputs folder the relative specs are looked up in.
    store : where sweep records are found and kept (default: the record store
        of ``options.cache_dir``; see :func:`mammography.cam.sweep.run_maps`).
    sweep_layers : layers to sweep besides the pack's own, so that the record
        also serves a later command (``--site``: the explorer's layers).

    Returns
    -------
    ReportResult

    Raises
    ------
    RunError, CheckpointError, ImageReadError
        A missing or broken run, checkpoint or image (nothing is written).
    RunError
        With ``options.strict``, when a checkpoint's recomputed predictions
        disagree with its ``val_predictions.csv`` (nothing is written).
    ConfigError
        Bad parameters.
    """
    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    cv_runs = [cv_runs] if isinstance(cv_runs, (str, Path)) else list(cv_runs)
    options = options or ReportOptions()
    options.validate()
    command = options.command or command_line(runs, cv_runs, options)
    assets_dir = Path(os.path.abspath(options.assets_dir))
    tex_path = Path(os.path.abspath(options.tex))
    md_path = Path(os.path.abspath(options.markdown))
    # taken before any expensive work: checks the outputs can be written, repairs an interrupted pack
    with OutputLock(folders=[assets_dir], files=[tex_path, md_path], command="mammography report-pack") as lock:
        return _report_pack(runs, cv_runs, options, command, Path(outputs_root), lock, store, list(sweep_layers))


def _report_pack(runs, cv_runs, options: ReportOptions, command: str, outputs_root: Path,
                 lock: OutputLock, store, sweep_layers: list[str]) -> ReportResult:
    from mammography.machine import resolve_device

    seed_runs, cvs = load_inputs(runs, cv_runs, outputs_root)
    device = resolve_device(options.device)

    # 1. recompute everything (the expensive part) or read it from a stored record; check before drawing
    def evaluate(run):
        return evaluate_run(run, options, device, store=store, layers=sweep_layers)

    evaluated = [evaluate(run) for run in seed_runs]
    cv_evaluated = [(cv, [evaluate(fold) for fold in cv.folds]) for cv in cvs]
    checks = [ev.check for ev in evaluated] + [ev.check for _, folds in cv_evaluated for ev in folds]
    for check in checks:
        (log.warning if check.n_disagree else log.debug)("%s", check.message())
    warnings = _collapse_warnings(evaluated + [f for _, folds in cv_evaluated for f in folds])
    for line in warnings:
        log.warning("%s", line)
    for ev in evaluated + [f for _, folds in cv_evaluated for f in folds]:
        for warning in degenerate_warnings(ev.y_true, ev.y_pred, what=f"{ev.run.run_id}'s model"):
            log.warning("%s", warning)
    bad = [c for c in checks if c.n_disagree]
    if bad and options.strict:
        raise RunError(
            "--strict: predictions recomputed from the checkpoint differ from the stored ones, nothing written. "
            + " | ".join(c.message() for c in bad)
        )

    # 2. draw and render into memory
    assets_dir = Path(os.path.abspath(options.assets_dir))
    pack = AssetBatch(options=options, assets_dir=assets_dir)
    try:
        seed_entries, selections = [], {}
        for ev in evaluated:
            seed_entries.append(_seed_outputs(pack, ev, selections))
        cv_entries = [_cv_outputs(pack, cv, folds, selections) for cv, folds in cv_evaluated]

        attention, analysis_record, attention_seconds = None, None, 0.0
        if options.analysis and evaluated:
            attention, analysis_record, attention_seconds = _attention(pack, evaluated, options)
        seed_table = metric_table(_metric_rows([(str(ev.run.seed), ev) for ev in evaluated])) if evaluated else None
        explained = evaluated or [f for _, fs in cv_evaluated for f in fs]
        main_layer = explained[0].layer if explained else options.layers[-1]
        content = ReportContent(
            seeds=tuple(seed_entries), seed_table=seed_table, cvs=tuple(cv_entries), method=canonical_method(options.method),
            layer=main_layer, selection=describe_strategy(options.select), per_class=options.per_class,
            command=command, version=__version__, attention=attention,
            notes=tuple(line[0].upper() + line[1:] + "." for line in warnings),
        )
        tex_path = Path(os.path.abspath(options.tex))
        md_path = Path(os.path.abspath(options.markdown))
        article_dir = options.resolved_article_dir()
        pack.add(tex_path, render_latex(content, article_dir, options.layout), "latex")
        pack.add(md_path, update_markdown(md_path, render_markdown_block(content, md_path)), "markdown")
    except BaseException:
        pack.close()  # the encoder threads
        raise
    pack.finish()

    manifest = {
        "tool": "mammography report-pack",
        "version": __version__,
        "command": command,
        "parameters": options.parameters(),
        "article_dir": article_dir.as_posix(),
        "runs": [run_record(ev) for ev in evaluated],
        "cv_runs": [
            {"cv_id": cv.root.name, "path": cv.root.as_posix(), "seed": cv.seed, "k": cv.k,
             "folds": [run_record(f) for f in folds]}
            for cv, folds in cv_evaluated
        ],
        "attention": analysis_record,
        "assets": pack.assets,
    }
    manifest_path = pack.batch.add(assets_dir / MANIFEST_NAME,
                                   json.dumps(clean_json(manifest), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    for stale in previous_assets(assets_dir):
        pack.batch.remove(stale, prune_up_to=assets_dir)

    # 3. all files at once, through the journal (report_manifest.json last)
    written = pack.batch.commit(lock.journal(assets_dir))
    return ReportResult(written=tuple(written), assets_dir=assets_dir, tex=tex_path, markdown=md_path,
                        manifest=manifest_path, checks=tuple(checks), layouts=pack.layouts, selections=selections,
                        attention_summary=attention.sentences if attention is not None else (),
                        attention_seconds=attention_seconds, warnings=tuple(warnings), content=content)


def _collapse_warnings(evaluated) -> list[str]:
    """``"<run id>: the model's output does not depend on the image ..."`` per collapsed run."""
    from mammography.training.metrics import prediction_collapse

    return [f"{ev.run.run_id}: {note}" for ev in evaluated if (note := prediction_collapse(ev.probs))]


def _attention(pack: AssetBatch, evaluated: list[EvaluatedRun], options: ReportOptions):
    """Analyse the seed runs from their maps; stage the files; (report entry, manifest record, seconds)."""
    import time

    from mammography.report.attention import AttentionSettings, analyse_runs, analysis_options, attention_outputs

    t0 = time.perf_counter()
    settings = AttentionSettings(roi_dir=options.roi_dir, manifest=options.manifest,
                                 faithfulness=options.faithfulness, faithfulness_images=options.faithfulness_images,
                                 marker_occlusion=options.marker_occlusion)
    method = canonical_method(options.method)

    def options_for(ev):
        return analysis_options(settings, method=method, layer=ev.layer, batch_size=options.batch_size,
                                device=options.device, cache_dir=options.cache_dir, progress=options.progress)

    analyses, consistency, notes = analyse_runs(evaluated, options_for)
    for note in notes:
        log.warning("%s", note)
    entry = attention_outputs(pack, analyses, evaluated, consistency, notes)
    seconds = time.perf_counter() - t0
    log.info("attention analysis of %d run(s): %.1f s", len(analyses), seconds)
    record = {
        "runs": {str(ev.run.seed): {k: a.summary.get(k) for k in ("n_images", "n_with_roi", "dense_source",
                                                                  "spurious", "faithfulness", "sanity")}
                 for ev, a in zip(evaluated, analyses)},
        "consistency": None if consistency is None else consistency.summary,
        "notes": notes,
    }
    return entry, record, seconds


def _seed_outputs(pack: AssetBatch, ev: EvaluatedRun, selections: dict) -> SeedEntry:
    """Class grid, layer figure and per-sample overlays of one seed run."""
    options, run = pack.options, ev.run
    selection = select_examples(ev, options)
    selections[run.run_id] = selection
    rows, tiles = grid_rows(ev, selection, pack.images)
    grid_path = pack.assets_dir / f"density_gradcam_seed{run.seed}.png"
    layout = pack.figure(grid_path, class_grid_figure(rows, title=grid_title(run, options, ev.layer),
                                                      n_columns=options.per_class, colormap=options.colormap,
                                                      alpha=options.alpha),
                         "class_grid", ev, layer=ev.layer)
    figure = _figure_ref(grid_path, layout, f"fig:density-gradcam-seed{run.seed}",
                         grid_caption(ev, selection, options, f"the seed-{run.seed} density model"),
                         f"Grad-CAM examples per density class, seed {run.seed}")

    for label in CLASSES:
        for rank, (i, tile) in enumerate(tiles[label], start=1):
            name = f"class{label}_{rank:02d}_{_file_stem(tile.image_path)}.png"
            pack.render(pack.assets_dir / "gradcam" / f"seed{run.seed}" / name,
                        lambda tile=tile: png_bytes(tile.rgb(options.alpha, options.colormap)), "overlay", ev,
                        image_path=tile.image_path, y_true=tile.y_true, y_pred=tile.y_pred,
                        confidence=tile.confidence, layer=ev.layer)

    layer_grid, names = layer_rows(ev, selection, options, pack.images)
    layer_path = pack.assets_dir / f"density_gradcam_layers_seed{run.seed}.png"
    layer_layout = pack.figure(
        layer_path,
        layer_grid_figure(layer_grid, title=grid_title(run, options, ", ".join(names) + " + fused"),
                          column_headers=[class_short(label) for label in CLASSES], colormap=options.colormap,
                          alpha=options.alpha),
        "layer_grid", ev, layers=names, fuse=options.fuse,
    )
    layer_figure = _figure_ref(layer_path, layer_layout, f"fig:density-gradcam-layers-seed{run.seed}",
                               layer_caption(ev, options, names, layer_layout.n_misclassified),
                               f"Grad-CAM at several depths, seed {run.seed}")
    return SeedEntry(run_id=run.run_id, seed=int(run.seed), checkpoint_short=short_hash(run),
                     n_val=ev.check.n_images, n_disagree=ev.check.n_disagree, figure=figure,
                     layer_figure=layer_figure)


def _cv_outputs(pack: AssetBatch, cv, folds: list[EvaluatedRun], selections: dict) -> CVEntry:
    """Fold figures and the per-fold metrics table of one cross-validation run."""
    options = pack.options
    cv_id = cv.root.name
    figures = []
    for ev in folds:
        selection = select_examples(ev, options)
        selections[ev.run.run_id] = selection
        rows, _ = grid_rows(ev, selection, pack.images)
        number = ev.run.fold if ev.run.fold is not None else len(figures) + 1
        # the folder name reaches \includegraphics: a slug, never the raw folder name
        path = pack.assets_dir / _folder_slug(cv_id) / f"fold_{number}_gradcam.png"
        layout = pack.figure(path, class_grid_figure(rows, title=grid_title(ev.run, options, ev.layer),
                                                     n_columns=options.per_class, colormap=options.colormap,
                                                     alpha=options.alpha),
                             "fold_grid", ev, layer=ev.layer, fold=number)
        caption = grid_caption(ev, selection, options, f"fold {number} of the {cv.k}-fold cross-validation {cv_id}")
        figures.append(_figure_ref(path, layout, f"fig:density-cv-{_slug(cv_id)}-fold{number}", caption,
                                   f"Grad-CAM examples, {cv_id} fold {number}"))
    evaluated = {ev.run.fold: ev for ev in folds}
    rows = []
    for record in cv.records:
        ev = evaluated.get(record.number)
        if ev is not None:
            rows += _metric_rows([(str(record.number), ev)])
        else:
            rows.append((f"{record.number} (stored)", record.metrics, False))
    table = metric_table(rows)
    return CVEntry(cv_id=cv_id, seed=cv.seed, k=cv.k, table=table, table_label=f"tab:density-cv-{_slug(cv_id)}",
                   figures=tuple(figures), caption=cv_caption(cv, evaluated))


def _metric_rows(labelled: list[tuple[str, EvaluatedRun]]) -> list[tuple[str, dict, bool]]:
    """Table rows: the metrics recomputed from the checkpoint, and under a run whose
    stored metrics read differently a ``(stored)`` row that the mean and sd leave out."""
    rows = []
    for label, ev in labelled:
        rows.append((label, ev.metrics, True))
        if ev.metrics_differ:
            rows.append((f"{label} (stored)", ev.run.metrics, False))
    return rows


def _figure_ref(path: Path, layout: FigureLayout, label: str, caption: str, alt: str) -> FigureRef:
    return FigureRef(path=path, label=label, caption=caption, alt=alt, wide=layout.width_in > COLUMN_WIDTH_IN + 1e-6)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def _folder_slug(name: str) -> str:
    """``name`` with every run of characters other than letters, digits, ``. _ -`` as one ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "cv"


def _file_stem(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:60] or "image"
