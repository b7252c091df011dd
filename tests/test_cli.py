"""The command line as a user meets it: through a subprocess."""

import subprocess
import sys

import pytest

from mammography import __version__
from mammography.cli import _strip_lone_dashdash, build_parser

COMMANDS = ["demo", "synth", "train-density", "cross-validate", "explain", "analyze", "report-pack", "explore"]


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "mammography", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_help_lists_every_command_with_a_description():
    out = run_cli("--help")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    for name in COMMANDS:
        at = [i for i, ln in enumerate(lines) if ln.split()[:1] == [name]]
        assert at, f"{name} missing from --help"
        # argparse puts the description beside a short name, on the next line after a long one
        entry = " ".join(lines[at[0] : at[0] + 2]).split()
        assert len(entry) > 3, f"{name} has no description"


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"mammography {__version__}"


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_has_help_with_an_example(name):
    out = run_cli(name, "--help")
    assert out.returncode == 0
    assert "mammography " + name in out.stdout


def test_lone_double_dash_after_the_command_is_ignored():
    argv = ["report-pack", "--", "--run", "results_4", "--assets-dir", "Article/assets"]
    assert _strip_lone_dashdash(argv) == ["report-pack", "--run", "results_4", "--assets-dir", "Article/assets"]
    args = build_parser().parse_args(_strip_lone_dashdash(argv))
    assert args.command == "report-pack"


def test_bad_flag_is_one_line_and_exit_code_2():
    out = run_cli("synth", "--no-such-flag")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert "--no-such-flag" in out.stderr
