"""The README as a new user reads it: its Python example runs as written, and its links lead somewhere."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


@pytest.mark.slow
def test_python_example_runs_as_written_and_saves_an_overlay(tmp_path):
    blocks = _python_blocks(README.read_text())
    assert len(blocks) == 1, "the README has one Python example"
    env = {**os.environ, "MAMMOGRAPHY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "wrote" in out.stdout and "overlay.png" in out.stdout
    overlay = np.asarray(Image.open(tmp_path / "overlay.png").convert("RGB"), dtype=np.float64)
    assert overlay.shape == (256, 208, 3)  # the original image's size: the heatmap was mapped back onto it
    # a real heatmap, not one colour: the jet colours vary across the image
    hue_spread = (overlay[..., 0] - overlay[..., 2]).std()
    assert hue_spread > 10, f"the overlay looks uniform (red-blue spread {hue_spread:.1f})"


def test_readme_links_lead_to_files_in_the_repository():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets
    for target in targets:
        if re.match(r"[a-z]+://", target):
            continue
        assert (README.parent / target.split("#")[0]).exists(), f"README links to a missing file: {target}"
    assert "DESIGN.md" not in text  # the design notes are not part of the repository
