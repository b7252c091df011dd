"""report building blocks on plain arrays: overlays, figure grid, selection, tables, LaTeX, Markdown.

No model here (see test_report_pack.py for the whole command on a trained run).
"""

import io
import shutil
import subprocess
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from mammography.analysis.selection import select_per_class
from mammography.errors import ConfigError
from mammography.io.geometry import fit_to_square
from mammography.report.content import CVEntry, FigureRef, ReportContent, SeedEntry
from mammography.report.figures import (
    COLUMN_WIDTH_IN,
    DPI,
    ERROR_COLOR,
    MIN_FONT_PT,
    GridRow,
    class_grid_figure,
    figure_png_bytes,
    figure_width_for,
    layer_grid_figure,
)
from mammography.report.latex import default_article_dir, render_latex, tex_escape
from mammography.report.markdown import BEGIN_MARKER, END_MARKER, render_markdown_block, replace_marked_block
from mammography.report.overlay import DisplayTile, blend, colorize, png_bytes, tile_label, to_display
from mammography.report.tables import format_percent, format_value, metric_table

# --------------------------------------------------------------------------- overlay


def test_colorize_follows_the_colormap_red_high_dark_blue_low():
    rgb = colorize(np.array([[0.0, 1.0]]), "jet")
    low, high = rgb[0, 0], rgb[0, 1]
    assert high[0] > 0.45 and high[1] < 0.05 and high[2] < 0.05  # dark red at 1.0
    assert low[2] > 0.45 and low[0] < 0.05  # dark blue at 0.0
    np.testing.assert_allclose(rgb[0, 0], matplotlib.colormaps["jet"](0.0)[:3], atol=1e-6)


def test_blend_weights_image_and_heatmap():
    image = np.full((2, 3), 0.5, np.float32)
    heat = np.ones((2, 3), np.float32)
    out = blend(image, heat, alpha=0.25, colormap="jet")
    expected = 0.75 * 0.5 + 0.25 * np.asarray(matplotlib.colormaps["jet"](1.0)[:3])
    np.testing.assert_allclose(out[1, 2], expected, atol=1e-6)
    np.testing.assert_allclose(blend(image, heat, alpha=0.0)[..., 0], image)
    with pytest.raises(ConfigError):
        blend(image, heat, alpha=1.5)
    with pytest.raises(ConfigError):
        blend(image, heat[:1], alpha=0.5)
    with pytest.raises(ConfigError, match="colour map"):
        colorize(heat, "no-such-map")


def test_to_display_undoes_padding_and_laterality_flip():
    # a wide-ish image whose bright block sits top-left in the original frame
    original = np.zeros((60, 40), np.float32)
    original[5:20, 2:12] = 1.0
    square, geom = fit_to_square(original, size=32, flip=True)
    heat_model = geom.to_model(original)  # a heatmap equal to the block, in model space
    image, heat = to_display(square, heat_model, geom)
    assert image.shape == tuple(geom.resized_shape) == heat.shape
    h, w = image.shape
    # the block is back on the left (flip undone), in the upper part
    assert image[: h // 3, : w // 3].mean() > 0.4 and image[:, w // 2 :].mean() < 0.05
    assert heat[: h // 3, : w // 3].mean() > 0.4 and heat[:, w // 2 :].mean() < 0.05
    # a low-resolution map is upsampled to the same frame
    _, small = to_display(square, np.ones((4, 4), np.float32), geom)
    assert small.shape == image.shape and np.allclose(small, 1.0)


def test_tile_label_and_png_bytes_are_stable():
    assert tile_label(3, 3, 0.8712) == "GT 3 \u00b7 Pred 3 \u00b7 0.87"
    rgb = np.random.default_rng(0).random((5, 7, 3))
    a, b = png_bytes(rgb), png_bytes(rgb)
    assert a == b
    assert Image.open(io.BytesIO(a)).size == (7, 5)


# --------------------------------------------------------------------------- figures


def _tile(label, pred=None, conf=0.87, shape=(64, 52)):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    image = np.clip(1 - (yy - shape[0] / 2) ** 2 / (shape[0] / 2) ** 2 - (xx / shape[1]) ** 2, 0, 1)
    heat = np.exp(-((yy - 20) ** 2 + (xx - 10) ** 2) / 200.0)
    return DisplayTile(image.astype(np.float32), heat.astype(np.float32), label, pred or label, conf, f"img{label}.dcm")


def _rows(counts=(4, 4, 2, 0)):
    rows = []
    for label, n in zip((1, 2, 3, 4), counts):
        rows.append(GridRow(header=f"{label} ({'ABCD'[label - 1]}) \u00b7 name {label}",
                            cells=[_tile(label) for _ in range(n)],
                            note=f"{n} of 4 requested" if 0 < n < 4 else "",
                            message="no validation images" if n == 0 else "", key=label))
    return rows


def _overlaps(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_class_grid_is_one_column_wide_at_300_dpi_with_legible_text():
    fig, layout = class_grid_figure(_rows(), title="results_4 \u00b7 seed 42 \u00b7 checkpoint 0123abcd", n_columns=4)
    data = figure_png_bytes(fig)
    img = Image.open(io.BytesIO(data))
    assert layout.width_in == COLUMN_WIDTH_IN
    assert img.size == layout.size_px and img.size[0] == round(COLUMN_WIDTH_IN * DPI)
    assert img.info["dpi"][0] == pytest.approx(DPI, abs=0.01)
    assert layout.min_font_pt >= MIN_FONT_PT
    # every text inside the figure and no two texts on top of each other
    texts = layout.texts
    for t in texts:
        x0, y0, x1, y1 = t.bbox_in
        assert x0 >= -1e-3 and y0 >= -1e-3 and x1 <= layout.width_in + 1e-3 and y1 <= layout.height_in + 1e-3, t
    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            assert not _overlaps(a.bbox_in, b.bbox_in), (a.text, b.text)
    labels = [t.text for t in texts if t.role == "tile_label"]
    assert labels.count("GT 1 \u00b7 Pred 1 \u00b7 0.87") == 4
    assert layout.row(3).note == "2 of 4 requested" and layout.row(3).n_tiles == 2
    assert layout.row(4).message == "no validation images" and layout.row(4).n_tiles == 0
    assert any(t.text == "no validation images" and t.role == "row_message" for t in texts)
    # colour bar ticks 0..1 and the title are drawn
    ticks = {t.text for t in texts if t.role == "axis"}
    assert {"0", "0.5", "1"} <= ticks
    assert any("seed 42" in t.text for t in texts if t.role == "title")


def test_class_grid_png_is_byte_identical_for_the_same_inputs():
    a = figure_png_bytes(class_grid_figure(_rows(), title="t", n_columns=4)[0])
    b = figure_png_bytes(class_grid_figure(_rows(), title="t", n_columns=4)[0])
    assert a == b
    c = figure_png_bytes(class_grid_figure(_rows((4, 4, 3, 0)), title="t", n_columns=4)[0])
    assert c != a
    assert b"Software" not in a and b"matplotlib" not in a


def test_long_titles_wrap_and_more_columns_widen_the_figure():
    long_title = "a_very_long_run_identifier_from_somewhere \u00b7 seed 42 \u00b7 checkpoint 0123abcd \u00b7 Grad-CAM at features.8"
    fig, layout = class_grid_figure(_rows(), title=long_title, n_columns=4)
    title = next(t for t in layout.texts if t.role == "title")
    assert "\n" in title.text and title.bbox_in[2] <= layout.width_in
    assert figure_width_for(4) == COLUMN_WIDTH_IN and figure_width_for(6) > COLUMN_WIDTH_IN
    _, wide = class_grid_figure(_rows((6, 6, 6, 6)), title="t", n_columns=6)
    assert wide.width_in > COLUMN_WIDTH_IN and wide.min_font_pt >= MIN_FONT_PT


def test_layer_grid_has_column_headers_and_labels_on_the_last_row_only():
    rows = [GridRow(header=name, cells=[_tile(1), _tile(2), _tile(3), "no validation images"],
                    show_labels=(name == "fused"), key=name) for name in ("features.4", "features.8", "fused")]
    fig, layout = layer_grid_figure(rows, title="layers", column_headers=["1 (A)", "2 (B)", "3 (C)", "4 (D)"])
    headers = [t.text for t in layout.texts if t.role == "column_header"]
    assert headers == ["1 (A)", "2 (B)", "3 (C)", "4 (D)"]
    assert layout.row("features.4").labels == () and len(layout.row("fused").labels) == 3
    assert any(t.role == "cell_message" and "validation" in t.text for t in layout.texts)
    assert layout.min_font_pt >= MIN_FONT_PT


# --------------------------------------------------------------------------- selection


def _predictions():
    # class 1: 3 correct (0.9, 0.7, 0.8), 1 wrong (0.95); class 2: 1 wrong; class 3: none; class 4: 2 correct
    y_true = np.array([1, 1, 1, 1, 2, 4, 4])
    y_pred = np.array([1, 1, 1, 2, 3, 4, 4])
    conf = np.array([0.9, 0.7, 0.8, 0.95, 0.6, 0.5, 0.5])
    probs = np.full((7, 4), 0.0)
    for i, (p, c) in enumerate(zip(y_pred, conf)):
        probs[i] = (1 - c) / 3
        probs[i, p - 1] = c
    paths = [f"img{i}.dcm" for i in (3, 1, 2, 0, 4, 6, 5)]
    return y_true, y_pred, probs, paths


def test_confident_selection_orders_correct_first_then_by_confidence():
    y_true, y_pred, probs, paths = _predictions()
    sel = select_per_class(y_true, y_pred, probs, paths, per_class=4)
    assert sel[1].indices == (0, 2, 1, 3)  # correct 0.9, 0.8, 0.7 then the wrong one
    assert sel[2].indices == (4,) and sel[2].note == "1 of 4 requested"
    assert sel[3].indices == () and sel[3].note == "no validation images"
    # tie (0.5, 0.5) broken by path, not by row order
    assert [paths[i] for i in sel[4].indices] == ["img5.dcm", "img6.dcm"]


def test_selection_does_not_depend_on_row_order():
    y_true, y_pred, probs, paths = _predictions()
    perm = np.random.default_rng(3).permutation(len(paths))
    for strategy in ("confident", "typical", "errors", "random"):
        a = select_per_class(y_true, y_pred, probs, paths, per_class=2, strategy=strategy, seed=7)
        b = select_per_class(y_true[perm], y_pred[perm], probs[perm], [paths[i] for i in perm], per_class=2,
                             strategy=strategy, seed=7)
        for label in (1, 2, 3, 4):
            assert [paths[i] for i in a[label].indices] == [paths[perm[i]] for i in b[label].indices], strategy


def test_errors_and_random_strategies():
    y_true, y_pred, probs, paths = _predictions()
    errors = select_per_class(y_true, y_pred, probs, paths, per_class=2, strategy="errors")
    assert errors[1].indices == (3, 1)  # the wrong one, then the least confident correct one
    r1 = select_per_class(y_true, y_pred, probs, paths, per_class=2, strategy="random", seed=1)
    r2 = select_per_class(y_true, y_pred, probs, paths, per_class=2, strategy="random", seed=1)
    assert r1 == r2
    with pytest.raises(ConfigError):
        select_per_class(y_true, y_pred, probs, paths, strategy="best")


def test_selection_prefers_distinct_patients_where_the_data_allow():
    # class 1: four images of patient A (most confident) and one of patient B; class 2: two images of patient C
    y_true = np.array([1, 1, 1, 1, 1, 2, 2])
    y_pred = y_true.copy()
    conf = np.array([0.99, 0.98, 0.97, 0.96, 0.60, 0.9, 0.8])
    probs = np.zeros((7, 4))
    probs[np.arange(7), y_true - 1] = conf
    paths = [f"img{i}.dcm" for i in range(7)]
    patients = ["A", "A", "A", "A", "B", "C", "C"]
    sel = select_per_class(y_true, y_pred, probs, paths, per_class=2, groups=patients)
    assert sel[1].indices == (0, 4) and sel[1].n_patients == 2 and not sel[1].repeats_patients
    assert sel[2].indices == (5, 6) and sel[2].repeats_patients and sel[2].available_patients == 1
    plain = select_per_class(y_true, y_pred, probs, paths, per_class=2)
    assert plain[1].indices == (0, 1) and plain[1].n_patients is None
    # a missing patient id counts as a patient of its own
    sel = select_per_class(y_true, y_pred, probs, paths, per_class=2, groups=["A", None, "", "A", "B", "C", "C"])
    assert sel[1].indices == (0, 1)


def test_captions_explain_the_marks_and_repeated_patients():
    from mammography.analysis.selection import ClassSelection
    from mammography.report.captions import grid_marks_text

    sel = {1: ClassSelection(1, (0, 1), 2, 5, "confident", n_patients=1, available_patients=1),
           2: ClassSelection(2, (2,), 2, 1, "confident", n_patients=1, available_patients=1)}
    text = grid_marks_text(sel, y_true=[1, 1, 2], y_pred=[1, 2, 2])
    assert "red frame" in text and "1 of the 3 images shown" in text
    assert "class 1 has validation images of only 1 patient, so its row repeats a patient" in text


def test_misclassified_tiles_are_framed_and_dollar_signs_are_text():
    rows = [GridRow(header="1 (A) $\\frac$", cells=[_tile(1), _tile(1, pred=3)], key=1)]
    fig, layout = class_grid_figure(rows, title="res$\\frac$ \u00b7 seed 43", n_columns=4)
    figure_png_bytes(fig)  # draws: matplotlib would fail on the maths without parse_math=False
    assert layout.row(1).misclassified == (False, True) and layout.n_misclassified == 1
    frames = [p for p in fig.axes[0].patches if p.get_gid() == "error_frame"]
    assert len(frames) == 1
    labels = [t for t in fig.texts if t.get_gid() == "tile_label"]
    assert [matplotlib.colors.to_hex(t.get_color()) for t in labels] == ["#000000", ERROR_COLOR]
    assert any(t.text == "res$\\frac$ \u00b7 seed 43" for t in layout.texts)


def test_verdicts_compare_with_the_baseline_and_a_stated_margin():
    from mammography.report.verdicts import (ABOVE, BELOW, WITHIN, chance_agreement, compare_difference,
                                              compare_share, random_region_iou)

    # 51 % outside the breast against 56 % for a uniform map: inside the +-25 % band, no clear preference
    assert compare_share(0.51, 0.49, 0.53, 0.56).verdict == WITHIN
    assert compare_share(0.30, 0.27, 0.33, 0.56).verdict == BELOW
    assert compare_share(0.80, 0.75, 0.85, 0.56).verdict == ABOVE
    assert compare_share(float("nan"), None, None, 0.56).verdict == WITHIN
    rng = np.random.default_rng(0)
    assert compare_difference(rng.normal(0.0, 0.05, 40)).verdict == WITHIN  # inside the random band
    assert compare_difference(rng.normal(-0.1, 0.02, 40)).verdict == BELOW
    # two models predicting classes 1/2 half and half agree by chance on half the images
    assert chance_agreement(np.array([[1, 1], [1, 2], [2, 1], [2, 2]])) == pytest.approx(0.5)
    assert random_region_iou(0.2) == pytest.approx(0.04 / 0.36)


# --------------------------------------------------------------------------- tables, LaTeX, Markdown


def test_metric_table_mean_and_sample_sd():
    t = metric_table([("42", {"acc": 0.8, "kappa_quadratic": None}), ("43", {"acc": 0.6, "kappa_quadratic": 0.5})])
    assert t.summary(0) == f"0.700 \u00b1 {np.std([0.8, 0.6], ddof=1):.3f}"
    assert t.summary(1) == "0.500"  # one value: no sd
    assert t.cell(0, 1) == "\u2014"


def _content(tmp_path, wide=False):
    fig = FigureRef(path=tmp_path / "Article" / "assets" / "density_gradcam_seed42.png",
                    label="fig:density-gradcam-seed42", caption="Seed 42 & friends: 50% of run_4 \u00b7 ok",
                    alt="seed 42", wide=wide)
    seed = SeedEntry(run_id="results_4", seed=42, checkpoint_short="0123abcd", n_val=10, n_disagree=0, figure=fig)
    table = metric_table([("42", {"acc": 0.8, "kappa_quadratic": 0.7, "macro_f1": 0.6, "auc_ovr": 0.9,
                                  "bal_acc_adj": 0.5})])
    cv = CVEntry(cv_id="results_k3_seed42", seed=42, k=3, table=table, table_label="tab:density-cv-x",
                 figures=(FigureRef(path=tmp_path / "Article" / "assets" / "cv" / "fold_1_gradcam.png",
                                    label="fig:cv-fold1", caption="fold 1", alt="fold 1"),))
    return ReportContent(seeds=(seed,), seed_table=table, cvs=(cv,), command="mammography report-pack --run x",
                         version="0.1.0")


def test_latex_escapes_text_and_uses_article_relative_paths(tmp_path):
    tex = render_latex(_content(tmp_path), tmp_path / "Article")
    # figures go through the layout macro: width and height bounds are set when the article compiles
    assert r"\MammoFigure{0}{assets/density_gradcam_seed42.png}" in tex
    assert r"\includegraphics[width=\linewidth,height=\Mammo@height,keepaspectratio]{#2}" in tex
    assert r"{fig:density-gradcam-seed42}" in tex
    assert r"Seed 42 \& friends: 50\% of run\_4 \textperiodcentered{} ok" in tex
    assert r"{assets/cv/fold_1_gradcam.png}" in tex and r"\MammoTable{tab:density-seeds}" in tex
    assert "0.800" in tex and tex_escape("a_b#c") == r"a\_b\#c"
    assert r"\MammoSetLayout{auto}" in tex
    wide = render_latex(_content(tmp_path, wide=True), tmp_path / "Article", layout="twocolumn")
    assert r"\MammoFigure{1}{assets/density_gradcam_seed42.png}" in wide and r"\MammoSetLayout{twocolumn}" in wide
    assert default_article_dir(tmp_path / "Article" / "sections" / "x.tex") == tmp_path / "Article"
    assert default_article_dir(tmp_path / "Paper" / "x.tex") == tmp_path / "Paper"


@pytest.mark.parametrize("text, expected", [
    ("p < 0.001", r"p \textless{} 0.001"),
    ("a > b | c", r"a \textgreater{} b \textbar{} c"),
    ("~^\\%_#&$", r"\textasciitilde{}\textasciicircum{}\textbackslash{}\%\_\#\&\$"),
    ("{x}", r"\{x\}"),
    ("\u03c1 = 0.87, \u03ba \u00b1 0.1", r"\ensuremath{\rho} = 0.87, \ensuremath{\kappa} \ensuremath{\pm} 0.1"),
    ("\u22120.05", r"\ensuremath{-}0.05"),
    ("--->", r"-{}-{}-\textgreater{}"),
    ("line\nbreak", "line break"),
    ("[0.1, 0.2]", "{[}0.1, 0.2{]}"),
    ("caf\u00e9 \U0001F600", "caf\u00e9 [U+1F600]"),
])
def test_tex_escape_prints_every_character_literally(text, expected):
    assert tex_escape(text) == expected


def test_long_names_may_break_and_comments_stay_on_one_line():
    from mammography.report.latex import tex_cell, tex_comment

    assert r"results\_\allowbreak{}k5\_\allowbreak{}seed42" in tex_escape("results_k5_seed42_experiment_final")
    assert "\n" not in tex_comment("a\nb\rc\u2028d") and tex_comment("a\nb") == "a b"
    assert tex_cell("0.41\n[0.38, 0.44]") == r"\MammoCell{c}{0.41\\{[}0.38, 0.44{]}}"


def test_numbers_use_a_true_minus_sign():
    assert format_value(-0.05, 2) == "\u22120.05" and format_value(-0.0001, 2) == "0.00"
    assert format_percent(-0.25) == "\u221225 %" and format_percent(0.825) == "82 %"


def test_markdown_escaping_cannot_inject_markup_or_end_the_comment():
    from mammography.report.markdown import html_comment, md_cell, md_escape, md_link

    assert md_escape("a|b *c* [d](e) <img src=x> $x$ #1 &lt;") == (
        r"a\|b \*c\* \[d\](e) \<img src=x\> \$x\$ \#1 \&lt;")
    assert md_escape("two\nlines") == "two lines" and md_cell("0.41\n[0.38, 0.44]") == r"0.41 \[0.38, 0.44\]"
    for text in ("--->", "-->", "a--!>b", "---", "x\n<script>"):
        inner = html_comment(text)
        assert "--" not in inner and "\n" not in inner, text
    assert md_link(Path("/a/b c/(x).png"), Path("/a")) == "b%20c/%28x%29.png"


def test_markdown_block_replacement_keeps_everything_outside(tmp_path):
    block = render_markdown_block(_content(tmp_path), tmp_path / "Article" / "02-density.md")
    assert block.startswith(BEGIN_MARKER) and block.rstrip().endswith(END_MARKER)
    assert "(assets/density_gradcam_seed42.png)" in block and "| 42 |" in block
    before = "# Title\r\n\r\nHand-written text.\r\n\r\n"
    after = "\r\nMore text after.\r\n"
    text = before + BEGIN_MARKER + "\nold generated text\n" + END_MARKER + after
    new = replace_marked_block(text, block)
    assert new.startswith(before) and new.endswith(after) and "old generated text" not in new
    assert replace_marked_block(new, block) == new  # idempotent
    assert replace_marked_block("", block) == block
    appended = replace_marked_block("# Notes\n", block)
    assert appended.startswith("# Notes\n\n" + BEGIN_MARKER)
    with pytest.raises(ConfigError, match="markers"):
        replace_marked_block(BEGIN_MARKER + "\n" + BEGIN_MARKER + END_MARKER, block)
    with pytest.raises(ConfigError, match="before"):
        replace_marked_block(END_MARKER + "\n" + BEGIN_MARKER, block)


# --------------------------------------------------------------------------- LaTeX compiles


@pytest.mark.latex
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_generated_section_compiles_with_pdflatex(tmp_path):
    content = _content(tmp_path)
    article = tmp_path / "Article"
    (article / "sections").mkdir(parents=True)
    (article / "assets" / "cv").mkdir(parents=True)
    for ref in (content.seeds[0].figure, content.cvs[0].figures[0]):
        fig, _ = class_grid_figure(_rows(), title="t", n_columns=4)
        ref.path.write_bytes(figure_png_bytes(fig))
    (article / "sections" / "density_model.tex").write_text(render_latex(content, article))
    (article / "main.tex").write_text(
        "\\documentclass[twocolumn]{article}\n\\usepackage{graphicx}\n\\begin{document}\n"
        "\\input{sections/density_model}\n\\end{document}\n"
    )
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=article,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
    log = (article / "main.log").read_text(errors="replace")
    assert "assets/density_gradcam_seed42.png" in log and "assets/cv/fold_1_gradcam.png" in log
