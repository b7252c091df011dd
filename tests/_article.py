"""A real report pack compiled into real articles, for the LaTeX layout and hostile-name tests.

:func:`build_pack` trains three small seed runs and a two-fold cross-validation
on phantoms (64 px, one epoch: seconds), gives their folders hostile names
(TeX code, a newline, an HTML comment end, matplotlib maths), and runs
report-pack over them with the attention analysis and faithfulness.
:func:`compile_article` puts the generated section into a document class and
runs pdflatex twice; :func:`pdf_words` reads the PDF's words with their
heights (``pdftotext -bbox``), so text sizes are measured in the PDF, not
guessed from the source.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pandas as pd

#: folder names that must be printed, never run (TeX code, a line break ending a comment,
#: an HTML comment end followed by markup, matplotlib maths, TeX specials)
HOSTILE_SEED_DIRS = {
    42: "results_4",
    43: "res$\\frac$%#&_~^}\\input{injected}{",
    44: "r--->\n<img src=x onerror=alert(1)>",
}
HOSTILE_CV_DIR = "cv_k2}\\input{^^2fetc^^2fhostname}\\includegraphics{cv"
#: a file beside the article that the names above try to \input: its text must never reach the PDF
INJECTED_FILE, INJECTED_TEXT = "injected.tex", "Injectedmarkertext"

#: the documents the section must fit: name -> preamble up to \begin{document}
DOCUMENTS = {
    "article-onecolumn-11pt": "\\documentclass[11pt]{article}\n",
    "article-twocolumn-10pt": "\\documentclass[twocolumn,10pt]{article}\n",
    # Elsevier's journal class (Debian: texlive-publishers) in its two-column final layout
    "elsarticle-5p": "\\documentclass[5p]{elsarticle}\n",
}
#: a word set at CALIBRATION_PT before the section, to turn word heights into font sizes
CALIBRATION_WORD = "Calibrationword"
CALIBRATION_PT = 10.0
#: the journal class's file; its tests skip where it is not installed
JOURNAL_CLASS = "elsarticle.cls"


@dataclass
class Pack:
    root: Path
    article: Path
    result: object
    seed_dirs: dict
    cv_dir: Path


def _train(manifest: Path, outdir: Path, seed: int, cache: Path) -> Path:
    from mammography.training.train import TrainConfig, train_density

    return Path(train_density(TrainConfig(csv=manifest, outdir=outdir, seed=seed, epochs=1, batch_size=8, img_size=64,
                                          device="cpu", cache_dir=cache, use_manifest_split=True, progress=False)))


def build_pack(root: Path) -> Pack:
    """Phantoms, three seed runs and a CV run under hostile folder names, and one report pack of them."""
    from mammography.report.pack import ReportOptions, report_pack
    from mammography.synth import generate_dataset
    from mammography.training.cv import cross_validate
    from mammography.training.train import TrainConfig

    manifest = generate_dataset(root / "phantoms", n=32, seed=3, size=(160, 128))
    cache = root / "cache"
    outputs = root / "outputs"
    seed_dirs = {}
    for seed, name in HOSTILE_SEED_DIRS.items():
        run = _train(manifest, outputs / f"seed{seed}", seed, cache)
        seed_dirs[seed] = run.rename(run.parent / name)
    cv = cross_validate(TrainConfig(csv=manifest, outdir=outputs / "cv", seed=42, epochs=1, batch_size=8, img_size=64,
                                    device="cpu", cache_dir=cache, progress=False), folds=2)
    cv_dir = cv.rename(cv.parent / HOSTILE_CV_DIR)
    article = root / "Article"
    options = ReportOptions(assets_dir=article / "assets", tex=article / "sections" / "density_model.tex",
                            markdown=article / "02-density.md", per_class=3, device="cpu", cache_dir=cache,
                            progress=False, faithfulness=True, faithfulness_images=6)
    result = report_pack([str(p) for p in seed_dirs.values()], [str(cv_dir)], options, outputs_root=outputs)
    (article / INJECTED_FILE).write_text(INJECTED_TEXT + "\n")
    return Pack(root=root, article=article, result=result, seed_dirs=seed_dirs, cv_dir=cv_dir)


@dataclass
class Compiled:
    name: str
    folder: Path
    log: str
    pdf: Path

    def pages(self) -> int:
        out = subprocess.run(["pdfinfo", str(self.pdf)], capture_output=True, text=True, check=True).stdout
        return int(re.search(r"^Pages:\s+(\d+)", out, re.M).group(1))

    def problems(self, tolerance_pt: float = 1.0) -> list[str]:
        """Log lines about floats too large and boxes overfull by more than ``tolerance_pt``."""
        bad = [ln for ln in self.log.splitlines() if "Float too large" in ln]
        for m in re.finditer(r"^(Overfull \\[hv]box \((-?[\d.]+)pt too (?:wide|high)\).*)$", self.log, re.M):
            if float(m.group(2)) > tolerance_pt:
                bad.append(m.group(1))
        return bad

    def warnings(self) -> list[str]:
        """Every LaTeX/package/class warning and over/underfull box line of the log."""
        pattern = re.compile(r"^(?:LaTeX|Package|Class) \S* ?Warning|^(?:Over|Under)full \\[hv]box", re.M)
        return [ln for ln in self.log.splitlines() if pattern.search(ln)]


def compile_article(pack_article: Path, work: Path, name: str, preamble: str, body: str = "") -> Compiled:
    """Copy the pack's article folder to ``work/name``, add ``main.tex`` and run pdflatex twice.

    ``main.tex`` is ``preamble``, graphicx, ``body``, the calibration word and
    ``\\input{sections/density_model}``; shell escape is off, as in a journal's build.
    """
    folder = work / name
    shutil.copytree(pack_article, folder)
    (folder / "main.tex").write_text(
        preamble + "\\usepackage{graphicx}\n\\begin{document}\n" + body
        + f"{{\\fontsize{{{CALIBRATION_PT:g}}}{{12}}\\selectfont {CALIBRATION_WORD}}}\n\n"
        + "\\input{sections/density_model}\n\\end{document}\n"
    )
    for _ in range(2):  # the second pass resolves the references
        out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "main.tex"],
                             cwd=folder, capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            raise AssertionError(f"pdflatex failed for {name}:\n{out.stdout[-4000:]}")
    return Compiled(name=name, folder=folder, log=(folder / "main.log").read_text(errors="replace"),
                    pdf=folder / "main.pdf")


def pdf_text(pdf: Path) -> str:
    """The PDF's text with hyphenation at line ends undone and whitespace collapsed."""
    # -raw: content-stream order, so the columns of a two-column page are not interleaved
    raw = subprocess.run(["pdftotext", "-raw", "-enc", "UTF-8", str(pdf), "-"], capture_output=True, text=True,
                         check=True).stdout
    return re.sub(r"\s+", " ", re.sub(r"(\w)-\n(\w)", r"\1\2", raw))


def pdf_words(pdf: Path) -> pd.DataFrame:
    """One row per word of the PDF: ``page, text, x0, y0, x1, y1, height`` (points)."""
    xml = subprocess.run(["pdftotext", "-bbox", "-enc", "UTF-8", str(pdf), "-"], capture_output=True, text=True,
                         check=True).stdout
    xml = re.sub(r"<!DOCTYPE[^>]*>", "", xml)
    root = ElementTree.fromstring(xml)
    ns = {"h": "http://www.w3.org/1999/xhtml"}
    rows = []
    for page_no, page in enumerate(root.iter("{http://www.w3.org/1999/xhtml}page"), start=1):
        for w in page.findall("h:word", ns):
            y0, y1 = float(w.get("yMin")), float(w.get("yMax"))
            rows.append((page_no, w.text or "", float(w.get("xMin")), y0, float(w.get("xMax")), y1, y1 - y0))
    return pd.DataFrame(rows, columns=["page", "text", "x0", "y0", "x1", "y1", "height"])


def font_size_pt(words: pd.DataFrame) -> np.ndarray:
    """Each word's font size in points, calibrated on :data:`CALIBRATION_WORD` (set at :data:`CALIBRATION_PT`).

    pdftotext's word height is the font's ascent + descent times its size, so
    heights scale with the size the word is printed at (scaled boxes included).
    """
    body_height = float(words.loc[words["text"] == CALIBRATION_WORD, "height"].iloc[0])
    return words["height"].to_numpy() * CALIBRATION_PT / body_height
