"""``mammography analyze``'s report files: the analysis figures and the rendered tables, written together.

:func:`analysis_report_files` renders the consistency and spurious-attention
figures (:mod:`mammography.report.consistency_figure`) and the tables
(:mod:`mammography.report.analysis_tables`) as file contents;
:func:`write_analysis_report` commits them with the analysis files, all or none.
"""

from __future__ import annotations

from mammography.analysis.run_analysis import ConsistencyResult, RunAnalysis, run_labels
from mammography.report.analysis_tables import render_analysis_tables
from mammography.report.consistency_figure import (
    CONSISTENCY_FIGURE,
    SPURIOUS_FIGURE,
    render_consistency_figure,
    render_spurious_figure,
)

__all__ = ["TABLE_FILES", "analysis_report_files", "write_analysis_report"]

#: file names of the rendered tables written by :func:`write_analysis_report`
TABLE_FILES = {"latex": "attention_tables.tex", "markdown": "attention_tables.md"}


def analysis_report_files(
    analyses: list[RunAnalysis],
    consistency: ConsistencyResult | None = None,
    labels: list[str] | None = None,
    *,
    figures: bool = True,
    n_consistency: int = 3,
    n_spurious: int = 4,
    colormap: str = "jet",
    alpha: float = 0.4,
) -> tuple[dict[str, bytes], dict[str, str]]:
    """Figures and tables of the analyses as file contents, for an all-or-nothing batch.

    Returns
    -------
    (files, captions): ``files`` maps a file name to its bytes:
    ``density_gradcam_consistency.png`` (when ``consistency`` is given),
    ``density_gradcam_spurious_seed{label}.png`` per run with images,
    ``attention_tables.tex`` and ``attention_tables.md``; ``captions`` maps
    each figure's name to its caption.
    """
    labels = labels or (run_labels(analyses) if len(analyses) > 1 else
                        [str(a.seed if a.seed is not None else a.run_id) for a in analyses])
    files: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    if figures and consistency is not None:
        png, _, caption = render_consistency_figure(consistency, n_consistency, colormap=colormap, alpha=alpha)
        files[CONSISTENCY_FIGURE], captions[CONSISTENCY_FIGURE] = png, caption
    if figures:
        for label, analysis in zip(labels, analyses):
            if len(analysis.table):
                name = SPURIOUS_FIGURE.format(label=label)
                png, _, caption = render_spurious_figure(analysis, n_spurious, label=label, colormap=colormap,
                                                         alpha=alpha)
                files[name], captions[name] = png, caption
    text = render_analysis_tables(analyses, consistency)
    files[TABLE_FILES["latex"]] = text.latex.encode("utf-8")
    files[TABLE_FILES["markdown"]] = text.markdown.encode("utf-8")
    return files, captions


def write_analysis_report(
    result,
    *,
    figures: bool = True,
    n_consistency: int = 3,
    n_spurious: int = 4,
    colormap: str = "jet",
    alpha: float = 0.4,
    journal=None,
    with_analysis: bool = False,
) -> list:
    """Write :func:`analysis_report_files` of an :class:`~mammography.analysis.run_analysis.AnalyzeResult`
    into ``result.out_dir``; the paths are returned and appended to ``result.written``.

    With ``with_analysis`` the analysis files themselves (``result.files()``,
    from ``analyze_runs(..., write=False)``) are written in the same
    all-or-nothing commit; ``journal`` is the commit journal of the output
    folder's :class:`~mammography.atomic.OutputLock`, which the caller holds.
    """
    from mammography.atomic import FileBatch

    files, _ = analysis_report_files(
        result.analyses, result.consistency, result.labels, figures=figures, n_consistency=n_consistency,
        n_spurious=n_spurious, colormap=colormap, alpha=alpha,
    )
    batch = FileBatch()
    for path, data in (result.files() if with_analysis else {}).items():
        batch.add(path, data)
    for name, data in files.items():
        batch.add(result.out_dir / name, data)
    written = batch.commit(journal)
    result.written.extend(written)
    return written
