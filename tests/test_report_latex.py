"""The generated section in real articles: it fits, its tables are legible, and names are printed, never run.

One report pack (three seed runs and a two-fold cross-validation, 64 px, one
epoch, under hostile folder names; see ``_article.py``) is compiled with
pdflatex into a one-column ``[11pt]{article}``, a two-column
``[twocolumn,10pt]{article}`` and Elsevier's ``elsarticle`` journal class in
its two-column layout. The tests read the log ("Float too large", overfull
boxes) and the PDF itself: ``pdftotext -bbox`` word heights give the printed
text size, and the PDF text must hold every caption whole and every hostile
name literally.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from _article import (
    CALIBRATION_WORD,
    DOCUMENTS,
    HOSTILE_CV_DIR,
    HOSTILE_SEED_DIRS,
    INJECTED_TEXT,
    JOURNAL_CLASS,
    build_pack,
    compile_article,
    font_size_pt,
    pdf_text,
    pdf_words,
)
from mammography.report.markdown import BEGIN_MARKER, END_MARKER
from mammography.report.texlayout import MIN_TABLE_PT

pytestmark = [
    pytest.mark.latex,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("pdflatex") is None or shutil.which("pdftotext") is None,
                       reason="pdflatex and pdftotext (poppler-utils) are needed"),
]


def _class_installed(name: str) -> bool:
    if not name.startswith("elsarticle"):
        return True
    found = subprocess.run(["kpsewhich", JOURNAL_CLASS], capture_output=True, text=True)
    return bool(found.stdout.strip())


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return build_pack(tmp_path_factory.mktemp("hostile-pack"))


@pytest.fixture(scope="module")
def compiled(pack, tmp_path_factory):
    work = tmp_path_factory.mktemp("articles")
    return {name: compile_article(pack.article, work, name, preamble)
            for name, preamble in DOCUMENTS.items() if _class_installed(name)}


def _document(compiled, name):
    if name not in compiled:
        pytest.skip(f"{JOURNAL_CLASS} is not installed (Debian: texlive-publishers)")
    return compiled[name]


def _squash(text: str) -> str:
    """Letters and digits only, lower case: compares captions across line breaks, hyphens and maths."""
    return re.sub(r"[^0-9a-z]", "", text.lower())


def _captions(content):
    from mammography.report.tables import cv_text_table, seed_text_table

    figures = [f for s in content.seeds for f in (s.figure, s.layer_figure) if f is not None]
    figures += [f for c in content.cvs for f in c.figures]
    tables = [seed_text_table(content.seed_table)]
    tables += [cv_text_table(c.table, cv_id=c.cv_id, k=c.k, seed=c.seed, label=c.table_label) for c in content.cvs]
    if content.attention is not None:
        figures += list(content.attention.figures)
        tables += list(content.attention.tables)
    return [f.caption for f in figures] + [t.caption for t in tables]


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_every_float_fits_the_page(compiled, name):
    doc = _document(compiled, name)
    assert doc.problems() == [], f"{name}: " + "\n".join(doc.problems())
    assert "LaTeX Warning: Reference" not in doc.log  # every \ref of the section resolves


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_every_caption_is_printed_whole(compiled, pack, name):
    doc = _document(compiled, name)
    text = _squash(pdf_text(doc.pdf))
    captions = _captions(pack.result.content)
    assert len(captions) >= 14  # 6 seed figures, 2 fold figures, attention figures, 7+ tables
    for caption in captions:
        words = caption.split()
        head, tail = _squash(" ".join(words[:8])), _squash(" ".join(words[-8:]))
        assert head in text and tail in text, f"{name}: caption missing from the PDF: {caption[:80]}"


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_no_text_is_printed_below_7_pt(compiled, pack, name):
    doc = _document(compiled, name)
    words = pdf_words(doc.pdf)
    words["pt"] = font_size_pt(words)
    # words set in the text fonts (symbols such as the centred dot come from other fonts with other metrics)
    text_words = words[words["text"].str.fullmatch(r"[A-Za-z0-9.,;:()%'/\[\]-]+") & (words["text"] != CALIBRATION_WORD)]
    smallest = text_words.nsmallest(3, "pt")
    assert smallest["pt"].min() >= MIN_TABLE_PT - 0.05, f"{name}: text below {MIN_TABLE_PT} pt:\n{smallest}"
    # the tables' numbers are there, and at a size a journal accepts
    cells = text_words[text_words["text"].str.fullmatch(r"\[?-?\d\.\d{2,3}[\],]?")]
    assert len(cells) > 50 and cells["pt"].min() >= MIN_TABLE_PT - 0.05


def _literal(text: str) -> str:
    """What pdftotext gives back for text set by tex_escape in the default OT1 encoding, without spaces.

    OT1 draws ``\\_`` as a rule (no glyph), ``^`` and ``~`` as accents.
    """
    text = text.replace("\u02c6", "^").replace("\u02dc", "~").replace("_", "")
    return re.sub(r"\s+", "", text)


def test_hostile_names_are_printed_never_run(compiled, pack):
    doc = next(iter(compiled.values()))
    text = _literal(pdf_text(doc.pdf))
    assert INJECTED_TEXT not in text  # \input{injected} in a folder name was not executed
    hostname = Path("/etc/hostname")
    if hostname.is_file() and len(hostname.read_text().strip()) >= 6:
        assert hostname.read_text().strip() not in pdf_text(doc.pdf)
    for name in list(HOSTILE_SEED_DIRS.values()) + [HOSTILE_CV_DIR]:
        assert _literal(name) in text, name
    tex = (pack.article / "sections" / "density_model.tex").read_text()
    command = [ln for ln in tex.splitlines() if ln.startswith("% Regenerate with:")]
    assert len(command) == 1 and "onerror" in command[0]  # the newline in a run name did not end the comment
    code = "\n".join(ln for ln in tex.splitlines() if not ln.startswith("%"))  # what TeX reads
    assert r"\input{injected}" not in code and r"\input{^^2fetc" not in code and "^^" not in code
    # the figure of a fold lives under a slug of the cross-validation folder's name
    assert re.search(r"\\MammoFigure\{\d\}\{assets/cv_k2-input-2fetc-2fhostname-includegraphics-cv/fold_1_gradcam\.png\}",
                     tex)


def test_hostile_names_in_markdown_are_text(pack):
    md = (pack.article / "02-density.md").read_text()
    block = md[md.index(BEGIN_MARKER):md.index(END_MARKER)]
    comment = block.splitlines()[1]
    assert comment.startswith("<!--") and comment.endswith("-->") and comment.count("--") == 2
    body = "\n".join(block.splitlines()[2:])  # inside the comment above, markup is inert
    assert "<img" not in body.replace("\\<img", "")  # only escaped, never raw HTML
    assert r"\<img src=x onerror=alert(1)\>" in body
    assert r"res\$\\frac\$%\#\&\_\~^}\\input{injected}{" in body
    # image links are percent-encoded relative paths
    links = re.findall(r"!\[[^\]]*\]\(([^)]*)\)", block)
    assert links and all(re.fullmatch(r"[A-Za-z0-9._/%-]+", link) for link in links)
    assert all((pack.article / link.replace("%20", " ")).is_file() for link in links)


def test_figure_titles_keep_dollar_signs(pack):
    layout = pack.result.layouts["density_gradcam_seed43.png"]
    title = next(t.text for t in layout.texts if t.role == "title")
    assert "res$\\frac$" in title.replace("\n", "")  # drawn as text, not parsed as maths


def test_standalone_tables_fragment_compiles_and_fits(pack, tmp_path):
    """analyze writes the same tables as a fragment with its own layout macros (attention_tables.tex)."""
    from mammography.report.latex import render_tables

    (tmp_path / "attention_tables.tex").write_text(render_tables(pack.result.content.attention.tables))
    (tmp_path / "main.tex").write_text("\\documentclass[twocolumn,10pt]{article}\n\\usepackage{graphicx}\n"
                                       "\\usepackage{booktabs}\n\\begin{document}\n\\input{attention_tables}\n"
                                       "\\end{document}\n")
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
    log = (tmp_path / "main.log").read_text(errors="replace")
    assert "Float too large" not in log and not re.search(r"Overfull \\[hv]box \((\d\d+|[2-9])\.", log)
