#!/usr/bin/env python
"""How a generated article section prints: pages, LaTeX warnings and the smallest text, per document class.

Compiles ``ARTICLE/sections/density_model.tex`` (as report-pack or the demo
writes it) with pdflatex, twice, into each document class the tests use
(one-column ``[11pt]{article}``, two-column ``[twocolumn,10pt]{article}``,
Elsevier's ``elsarticle`` ``[5p]``), then reads the log and the PDF:

* pages;
* "Float too large" and overfull boxes over 1 pt (must be 0), and every
  LaTeX warning, under- or overfull box line;
* the smallest printed text and the smallest printed table number, in points,
  from ``pdftotext -bbox`` word heights calibrated on a word set at 10 pt.

Example (the demo's article)::

    mammography demo --out mammography-demo
    python bench/bench_latex.py mammography-demo/Article
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import _article  # noqa: E402  (the tests' compile-and-measure helpers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("article", type=Path, help="article folder holding sections/density_model.tex and assets/")
    parser.add_argument("--keep", type=Path, help="folder to keep the compiled documents in (default: a temp folder)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-latex-"))
    work.mkdir(parents=True, exist_ok=True)
    for name, preamble in _article.DOCUMENTS.items():
        shutil.rmtree(work / name, ignore_errors=True)
        try:
            doc = _article.compile_article(args.article, work, name, preamble)
        except AssertionError as exc:
            print(f"{name}: does not compile ({str(exc).splitlines()[0]})")
            continue
        words = _article.pdf_words(doc.pdf)
        words["pt"] = _article.font_size_pt(words)
        text = words[words["text"].str.fullmatch(r"[A-Za-z0-9.,;:()%'/\[\]-]+")
                     & (words["text"] != _article.CALIBRATION_WORD)]
        numbers = text[text["text"].str.fullmatch(r"\[?-?\d\.\d{2,3}[\],]?")]
        print(f"{name}: {doc.pages()} pages, {len(doc.problems())} floats too large or boxes overfull > 1 pt, "
              f"{len(doc.warnings())} warnings, smallest text {text['pt'].min():.2f} pt, smallest table number "
              f"{numbers['pt'].min():.2f} pt ({len(numbers)} numbers)")
        for line in doc.warnings():
            print(f"    {line}")
    print(f"compiled documents: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
