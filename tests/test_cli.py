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


def _subparsers():
    import argparse

    parser = build_parser()
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


@pytest.mark.parametrize("name", COMMANDS)
def test_every_flag_has_help_and_shows_its_default(name):
    sub = _subparsers()[name]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{name} {action.option_strings[0]} has no help"
        text = formatter._get_help_string(action)
        assert "default" in text.lower() or "(required)" in text, f"{name} {action.option_strings[0]}: {text}"
    out = run_cli(name, "--help")
    assert "(default: " in out.stdout


@pytest.mark.parametrize("name", ["demo", "train-density", "cross-validate", "explain", "analyze", "report-pack",
                                  "explore"])
def test_one_device_default_everywhere(name):
    device = next(a for a in _subparsers()[name]._actions if "--device" in a.option_strings)
    assert device.default == "auto"


@pytest.mark.parametrize("argv, hint", [
    (["reportpack"], "did you mean 'report-pack'?"),
    (["report-pack", "--selct", "errors"], "--selct: did you mean '--select'?"),
    (["train-density", "--csv", "m.csv", "--epocs", "3"], "--epocs: did you mean '--epochs'?"),
    (["report-pack", "--select", "confidnt"], "did you mean 'confident'?"),
    (["report-pack", "--layout", "twocolum"], "did you mean 'twocolumn'?"),
])
def test_typos_get_a_did_you_mean(argv, hint):
    out = run_cli(*argv)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert hint in out.stderr, out.stderr


def test_a_file_given_as_run_is_explained_and_run_names_get_suggestions(tmp_path):
    run = tmp_path / "outputs" / "mammo_efficientnetb0_density" / "results_4"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    out = run_cli("report-pack", "--run", str(run / "summary.json"), cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "is a file in a run directory, not a run directory" in out.stderr and str(run) in out.stderr
    out = run_cli("report-pack", "--run", "results_5", cwd=tmp_path)
    assert out.returncode == 2 and "not found" in out.stderr and "did you mean 'results_4'?" in out.stderr
