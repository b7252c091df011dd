"""Publication outputs: Grad-CAM overlays, figure grids, LaTeX, Markdown and ``report-pack``.

Modules (lower ones know nothing of the upper ones)::

    overlay            colour a heatmap, blend it on a mammogram, undo the model-space fit
    figures            class-grid and layer-wise figures (300 dpi, one column wide), PNG bytes
    tables             metric tables with mean ± sd
    content            the report as data (figures, captions, tables)
    latex              sections/density_model.tex (Jinja2 template)
    markdown           the block between marker comments in a Markdown file
    options            report-pack's parameters (ReportOptions) and its canonical command line
    captions           the words of the figures: titles, row headers, captions
    display            the chosen images as tiles of the original mammogram with their heatmaps
    evaluate           the runs, each with its recomputed predictions and maps (one sweep record)
    provenance         the staged assets and report_manifest.json
    attention          report-pack's attention analysis: files, figures, sentences
    analysis_tables    the analysis tables (LaTeX and Markdown)
    consistency_figure the cross-seed and spurious-attention figures
    analysis_report    mammography analyze's figures and tables, written together
    pack               report_pack(): runs -> everything above

Entry point::

    from mammography.report import ReportOptions, report_pack
    result = report_pack(["results_4"], options=ReportOptions(assets_dir="Article/assets"))
"""

from mammography._lazy import lazy_exports

_EXPORTS = {
    "report_pack": "mammography.report.pack",
    "ReportOptions": "mammography.report.options",
    "ReportResult": "mammography.report.pack",
    "PredictionCheck": "mammography.runs",
    "evaluate_run": "mammography.report.evaluate",
    "MANIFEST_NAME": "mammography.report.provenance",
    "DisplayTile": "mammography.report.overlay",
    "blend": "mammography.report.overlay",
    "colorize": "mammography.report.overlay",
    "GridRow": "mammography.report.figures",
    "FigureLayout": "mammography.report.figures",
    "class_grid_figure": "mammography.report.figures",
    "layer_grid_figure": "mammography.report.figures",
    "figure_png_bytes": "mammography.report.figures",
    "replace_marked_block": "mammography.report.markdown",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
