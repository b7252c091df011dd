"""Tables of an archive job for the article: LaTeX and Markdown from one set of records.

``mammography report-pack --from DIR`` and ``mammography analyze --from DIR``
turn an :class:`~mammography.distributed.summary.ArchiveSummary` into
:class:`~mammography.report.tables.TextTable` records (per run, per density
class, cross-seed agreement) and render them with the report's own LaTeX and
Markdown templates, so the numbers of the archive read like those of a
validation set.
"""

from __future__ import annotations

from pathlib import Path

from mammography.analysis.spurious import SPURIOUS_KINDS
from mammography.report.tables import TextTable, format_percent, format_value

__all__ = ["analyze_archive", "archive_files", "archive_tables", "markdown_block", "report_archive"]

_KIND_HEADERS = {"outside_breast": "Outside\nbreast", "border": "Border\nband", "marker": "Markers",
                 "film_edge": "Film\nedges", "spurious": "Any"}


def _kinds(summary) -> list[str]:
    """Kinds shown: film edges only when some run met one."""
    film = any("film_edge" in r["flagged"] for r in summary.runs)
    return [k for k in SPURIOUS_KINDS if k != "film_edge" or film] + ["spurious"]


def _runs_table(summary) -> TextTable:
    kinds = _kinds(summary)
    rows = []
    for r in summary.runs:
        verdict = ", ".join(k.replace("_", " ") for k in r["reasons"]) or "none"
        rows.append((str(r["label"]), str(r["n_images"]), str(r["n_errors"]), format_percent(r["accuracy"]),
                     *[format_percent(r["flag_rates"][k]) for k in kinds], verdict))
    n = summary.job["manifest"]["n_images"]
    thresholds = summary.job["settings"]["spurious"]
    return TextTable(
        key="archive-runs", label="tab:archive-runs", title="Spurious attention over the archive",
        caption=(f"Share of the archive's {n} images whose Grad-CAM attention is flagged as spurious, per run: "
                 "attention outside the breast, in the border band or on burned-in markers more concentrated "
                 "than a uniform map's on the same image (odds ratio above "
                 f"{format_value(thresholds['outside_breast_ratio'], 1)}, markers: enrichment above "
                 f"{format_value(thresholds['marker_enrichment'], 1)} or a probability drop above "
                 f"{format_value(thresholds['marker_dependence'], 2)} when they are painted over)."),
        headers=("Run", "Images", "Errors", "Acc.", *[_KIND_HEADERS[k] for k in kinds], "Run flagged\nfor"),
        rows=tuple(rows),
        notes=(f"A run is flagged for a kind when more than {format_percent(thresholds['max_flag_rate'])} of its "
               "images are, or when its mean ratio exceeds the per-image threshold. Errors: images that could not "
               "be read (not counted in the rates). Acc.: accuracy against the manifest's labels.",),
    )


def _class_table(summary) -> TextTable:
    rows = []
    for r in summary.runs:
        for k, c in sorted(r["by_class"].items(), key=lambda kv: int(kv[0])):
            rows.append((str(r["label"]), "ABCD"[int(k) - 1], str(c["n_images"]), format_percent(c["accuracy"]),
                         format_percent(c["flag_rates"]["spurious"]), format_percent(c["flag_rates"]["marker"]),
                         format_value(c["means"]["dense_margin"]["mean"], 2),
                         format_percent(c["means"]["attended_breast_share"]["mean"])))
    notes = []
    for r in summary.runs:
        widens = r["attention_by_class"]["widens"]
        notes.append(f"Run {r['label']}: the attended share of the breast "
                     f"{'widens' if widens else 'does not widen steadily'} from the lowest to the highest class.")
    return TextTable(
        key="archive-classes", label="tab:archive-classes", title="Attention per density class",
        caption=("Per run and BI-RADS density class (manifest label): images, accuracy, share of images flagged "
                 "for any spurious attention and for markers, dense-tissue margin (share of the attention inside "
                 "the breast on dense tissue minus the dense area's share) and the share of the breast with "
                 "normalised attention of at least 0.5."),
        headers=("Run", "Class", "Images", "Acc.", "Flagged", "Markers\nflagged", "Dense\nmargin", "Attended\nbreast"),
        rows=tuple(rows), notes=tuple(notes),
    )


def _consistency_table(summary) -> TextTable | None:
    c = summary.consistency
    if c is None:
        return None
    rows = [("ABCD"[int(k) - 1], str(v["n_images"]), format_percent(v["high_agreement_rate"]),
             format_percent(v["prediction_agreement_rate"])) for k, v in c["by_class"].items()]
    footer = (("All", str(c["n_images"]), format_percent(c["high_agreement_rate"]),
               format_percent(c["prediction_agreement_rate"])),)
    rho, iou = c["mean_rank_correlation"], c["mean_top_iou"]
    t = c["thresholds"]
    return TextTable(
        key="archive-consistency", label="tab:archive-consistency", title="Agreement across runs",
        caption=(f"Images every run ({', '.join(c['runs'])}) explained, by density class: high agreement (same "
                 f"prediction, maps with Spearman rho of at least {format_value(t['min_rank_correlation'], 2)} and "
                 f"top-20 % regions overlapping with IoU of at least {format_value(t['min_top_iou'], 2)} inside the "
                 "breast, no run flagged for markers or the border band) and agreeing predictions."),
        headers=("Class", "Images", "High\nagreement", "Predictions\nagree"),
        rows=tuple(rows), footer=footer,
        notes=(f"Mean rank correlation {format_value(rho['mean'], 2)} (95 % CI {format_value(rho['low'], 2)} to "
               f"{format_value(rho['high'], 2)}); mean top-region IoU {format_value(iou['mean'], 2)} "
               f"({format_value(iou['low'], 2)} to {format_value(iou['high'], 2)}).",),
    )


def archive_tables(summary) -> list[TextTable]:
    """The archive's tables: per run, per density class, and across runs when there are two or more."""
    tables = [_runs_table(summary), _class_table(summary)]
    consistency = _consistency_table(summary)
    return tables + ([consistency] if consistency is not None else [])


def archive_files(summary, layout: str = "auto") -> dict[str, bytes]:
    """``archive_tables.tex`` and ``archive_tables.md`` by name."""
    from mammography.report.latex import render_tables
    from mammography.report.markdown import render_markdown_tables

    tables = archive_tables(summary)
    return {"archive_tables.tex": render_tables(tables, layout).encode("utf-8"),
            "archive_tables.md": render_markdown_tables(tables).encode("utf-8")}


def markdown_block(summary) -> str:
    """The report-pack block (markers included) of the archive's tables."""
    from mammography.report.markdown import BEGIN_MARKER, END_MARKER, render_markdown_tables

    return f"{BEGIN_MARKER}\n{render_markdown_tables(archive_tables(summary)).strip()}\n{END_MARKER}\n"


def report_archive(folder: str | Path, *, assets_dir: str | Path, tex: str | Path, markdown: str | Path,
                   layout: str = "auto", progress: bool = False):
    """``report-pack --from DIR``: the archive's summary files into ``assets_dir``, its tables as the
    LaTeX section ``tex`` and as the marked block of ``markdown``; all written together, or none."""
    from mammography.atomic import FileBatch, OutputLock
    from mammography.distributed.summary import ARCHIVE_FILES, summarise_archive, summary_files
    from mammography.report.markdown import replace_marked_block

    assets, tex, markdown = Path(assets_dir), Path(tex), Path(markdown)
    with OutputLock(folders=[assets], files=[tex, markdown], command="mammography report-pack --from") as lock:
        summary = summarise_archive(folder, consistency_file=assets / ARCHIVE_FILES["consistency"],
                                    progress=progress)
        batch = FileBatch()
        for name, data in summary_files(summary).items():
            batch.add(assets / name, data)
        files = archive_files(summary, layout)
        batch.add(tex, files["archive_tables.tex"])
        old = markdown.read_text(encoding="utf-8") if markdown.is_file() else ""
        batch.add(markdown, replace_marked_block(old, markdown_block(summary), source=str(markdown)))
        written = batch.commit(lock.journal(assets))
    if summary.consistency_file is not None:
        written.append(summary.consistency_file)
    return written, summary


def analyze_archive(folder: str | Path, out_dir: str | Path, *, runs=None, thresholds=None, layout: str = "auto",
                    progress: bool = False):
    """``analyze --from DIR``: the archive's summary files, per-image agreement and tables into ``out_dir``.

    Returns
    -------
    (written paths, :class:`~mammography.distributed.summary.ArchiveSummary`)
    """
    from mammography.analysis.consistency import ConsistencyThresholds
    from mammography.atomic import FileBatch, OutputLock
    from mammography.distributed.summary import ARCHIVE_FILES, summarise_archive, summary_files

    out = Path(out_dir)
    with OutputLock(folders=[out], command="mammography analyze --from") as lock:
        summary = summarise_archive(folder, runs=runs, thresholds=thresholds or ConsistencyThresholds(),
                                    consistency_file=out / ARCHIVE_FILES["consistency"], progress=progress)
        batch = FileBatch()
        for name, data in {**summary_files(summary), **archive_files(summary, layout)}.items():
            batch.add(out / name, data)
        written = batch.commit(lock.journal(out))
    if summary.consistency_file is not None:
        written.append(summary.consistency_file)
    return written, summary
