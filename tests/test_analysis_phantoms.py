"""Known answers on phantoms: trained EfficientNet-B0 models must show what the phantoms were built to show.

Three models share this module (trained once, module-scoped):

* **clean**: ``train_density`` on a phantom set without shortcut; its attention
  must favour dense tissue (more heatmap mass on it than its share of the
  breast) and it must not be flagged for spurious attention;
* **shortcut**: ``train_density`` on a ``--shortcut 4`` phantom set whose
  labels were redrawn so that the burned-in square is the *only* cue (class 4
  exactly when the square is there, classes 1-3 at random otherwise), so the
  model is known to rely on the marker; it must be flagged for it;
* **random**: the same architecture, untrained.

Why the shortcut labels are redrawn: with the phantoms' true labels density
is the easier cue, and on the GPU sweep behind these tests models trained on
the ``--shortcut 4`` set learned density and did not depend on the square
(painting it over changed nothing), so "is flagged" would test nothing.
Grad-CAM at ``features.8`` (4 x 4 cells at 128 px) does not localise the
2-pixel square even for the model that relies on it; the flag comes from
painting the detected markers with the background (``marker_occlusion_drop``).

Numbers measured when the bounds were set are in the closing notes of the
analysis work; the bounds are about half of the smallest margin seen.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from mammography.analysis.run_analysis import AnalysisOptions, analyze_maps, analyze_run
from mammography.cam.sweep import sweep_run
from mammography.runs import load_run

pytestmark = pytest.mark.slow

IMG = 128
N_IMAGES = 160  # 128 training and 32 validation images (the generator's patient-level split)
SIZE = (256, 208)
SEED = 42
#: (epochs, learning rate). The clean model must really learn density: after 4 epochs its validation
#: accuracy was still at chance and its attention margin flipped sign with the number of CPU threads
#: (+0.049 on 1 thread, -0.085 on 2). With 12 epochs at 2e-3, seeds 42/43/44 on 1 thread and 42/43 on
#: 2 threads reached accuracy 0.91-1.00 and margins 0.041-0.045, none flagged. Learning the 2-pixel
#: square takes about ten epochs (on the CPU runs behind these tests it was learned at epoch 10 of 12).
CLEAN_SCHEDULE = (12, 2e-3)
SHORTCUT_SCHEDULE = (12, 1e-3)


def _train(manifest, outdir, tmp_cache, schedule):
    from mammography.training.train import TrainConfig, train_density

    epochs, lr = schedule
    config = TrainConfig(csv=manifest, outdir=outdir, seed=SEED, epochs=epochs, batch_size=16, lr=lr, img_size=IMG,
                         save_best=True, use_manifest_split=True, progress=False, device="cpu", cache_dir=tmp_cache)
    return load_run(train_density(config))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("known_answers")


@pytest.fixture(scope="module")
def clean_run(work):
    from mammography.synth.dataset import generate_dataset

    manifest = generate_dataset(work / "clean", n=N_IMAGES, seed=0, size=SIZE, class_mix=(0.25,) * 4)
    return _train(manifest, work / "runs_clean", work / "cache", CLEAN_SCHEDULE)


@pytest.fixture(scope="module")
def shortcut_run(work):
    from mammography.synth.dataset import generate_dataset

    manifest = generate_dataset(work / "short", n=N_IMAGES, seed=0, size=SIZE, class_mix=(0.25,) * 4, shortcut=4)
    table = pd.read_csv(manifest)
    square = table["artifact_bbox"].notna() & (table["artifact_bbox"].astype(str) != "")
    table["density_label"] = np.where(square, 4, np.random.default_rng(0).integers(1, 4, len(table)))
    relabelled = manifest.with_name("manifest_square_only.csv")
    table.to_csv(relabelled, index=False)
    return _train(relabelled, work / "runs_short", work / "cache", SHORTCUT_SCHEDULE)


@pytest.fixture(scope="module")
def options(work):
    return AnalysisOptions(device="cpu", cache_dir=work / "cache", batch_size=16)


@pytest.fixture(scope="module")
def clean(clean_run, options):
    return analyze_run(clean_run, options)


@pytest.fixture(scope="module")
def shortcut(shortcut_run, options):
    return analyze_run(shortcut_run, options)


@pytest.fixture(scope="module")
def random_maps(clean_run, options):
    """The clean run's images explained by an untrained model of the same architecture."""
    from mammography.models import build_density_model

    torch.manual_seed(SEED)
    model = build_density_model().eval()
    sweep = sweep_run(clean_run, options.layer, options.method, device="cpu", progress=False, model=model)
    return analyze_maps(clean_run, clean_run.dataset(), sweep.maps[sweep.layers[-1]], sweep.probs, model=model,
                        options=options)


def test_trained_model_attends_to_dense_tissue_more_than_its_area_share(clean_run, clean, random_maps):
    """Measured margins (mean over the 32 validation images): 0.041-0.045 for 128-px models trained here
    (12 epochs, seeds 42-44, 1 or 2 threads), 0.035-0.047 for nine GPU-trained 128-px models; untrained
    models -0.12 (this seed) to 0.01."""
    assert clean_run.metrics["acc"] > 0.6  # a model that learned density, not one at chance
    margin = clean.table["dense_margin"]
    summary = clean.summary["patterns"]["dense_margin"]
    assert summary["mean"] > 0.015 and summary["low"] > 0.0
    assert (margin > 0).mean() > 0.7
    assert random_maps.summary["patterns"]["dense_margin"]["mean"] < summary["mean"] - 0.02


def test_clean_model_is_not_flagged_and_the_shortcut_model_is(clean, shortcut):
    assert not clean.summary["spurious"]["flagged"], clean.summary["spurious"]
    assert clean.table["marker_occlusion_drop"].max() < 0.25
    s = shortcut.summary["spurious"]
    assert s["flagged"] and "marker" in s["reasons"]
    square = shortcut.table["y_true"] == 4  # relabelled: class 4 exactly where the square is
    assert shortcut.table.loc[square, "marker_occlusion_drop"].mean() > 0.5
    assert shortcut.table.loc[square, "marker_flag"].mean() > 0.75
    assert shortcut.table.loc[~square, "marker_flag"].mean() < 0.1
    # the model relies on the square, yet Grad-CAM at the last block does not put its mass there
    assert shortcut.table.loc[square, "marker_enrichment"].mean() < 3.0


def test_random_model_is_flagged_where_trained_ones_are_not(random_maps):
    """Untrained networks' Grad-CAM follows bright edges: this seed's puts 3.7 times the markers' area share
    on them and more than 70 % of the mass outside the breast on many images."""
    assert random_maps.summary["spurious"]["flagged"]
    assert random_maps.summary["patterns"]["dense_margin"]["mean"] < 0


def test_randomisation_check_passes_for_the_trained_model(shortcut_run, shortcut):
    from mammography.analysis.faithfulness import cam_explainer, cascading_randomisation
    from mammography.analysis.run_analysis import _image_areas, _inputs

    model = shortcut_run.load_model()
    idx = np.arange(8)
    sanity = cascading_randomisation(model, _inputs(shortcut.dataset, idx), shortcut.table["y_pred"].to_numpy()[idx] - 1,
                                     explain=cam_explainer(), areas=_image_areas(shortcut.dataset, idx))
    # measured 0.09 (intermediate stages fluctuate: a 4 x 4 map has only 16 cells to rank)
    assert sanity.passed and sanity.final_correlation < 0.5
