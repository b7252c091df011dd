"""The demo's overall progress line: share done, elapsed time and time left, driven by a fake clock."""

import pytest

from mammography.demo import STAGE_WEIGHTS, DemoProgress


def test_progress_line_has_share_elapsed_and_time_left():
    now = [100.0]
    lines = []
    progress = DemoProgress(("phantoms", "training", "report", "explorer"), announce=lines.append,
                            clock=lambda: now[0])
    progress.update("phantoms", 0.0, "writing the phantom data set")
    assert lines[-1] == "[demo   0 %] 0:00 elapsed, estimating the time left - writing the phantom data set"
    now[0] = 110.0
    progress.update("training", 0.0)
    now[0] = 130.0  # one of 36 epochs took 20 s: training takes 12 min, and the later stages their share
    line = progress.update("training", 1 / 36, "training seed 42, epoch 1/12")
    training = 20 * 36
    later = (STAGE_WEIGHTS["report"] + STAGE_WEIGHTS["explorer"]) / STAGE_WEIGHTS["training"]
    left = training * (35 / 36) + training * later
    done = 100 * (STAGE_WEIGHTS["phantoms"] + STAGE_WEIGHTS["training"] / 36)
    assert line.startswith(f"[demo {done:3.0f} %] 0:30 elapsed, about ")
    minutes, seconds = line.split("about ")[1].split(" left")[0].split(":")
    assert int(minutes) * 60 + int(seconds) == pytest.approx(left, abs=1)
    assert line.endswith(" - training seed 42, epoch 1/12")
    now[0] = 400.0
    assert progress.update("explorer", 1.0) == "[demo 100 %] 5:00 elapsed, done"


def test_weights_are_renormalised_without_the_explorer():
    progress = DemoProgress(("phantoms", "training", "report"), announce=lambda _: None, clock=lambda: 0.0)
    assert sum(progress.weights.values()) == pytest.approx(1.0)
    assert progress.update("report", 1.0).startswith("[demo 100 %]")


def test_metrics_line_survives_undefined_metrics(tmp_path):
    import json

    from mammography.demo import _metrics_line

    (tmp_path / "metrics").mkdir()
    (tmp_path / "summary.json").write_text(json.dumps({"seed": 44, "best_epoch": 2}))
    (tmp_path / "metrics" / "val_metrics.json").write_text(json.dumps({"acc": 1.0, "kappa_quadratic": None,
                                                                        "bal_acc_adj": None}))
    assert _metrics_line(tmp_path) == "seed 44: acc 1.000, kappa n/a, bal_acc_adj n/a (best epoch 2)"
