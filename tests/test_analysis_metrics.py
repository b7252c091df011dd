"""Attention metrics on hand-made maps and masks whose answers are known exactly."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mammography.analysis.consistency import (
    HIGH_AGREEMENT,
    LOW_AGREEMENT,
    REASON_ARTEFACT,
    REASON_PREDICTIONS,
    REASON_REGIONS,
    ConsistencyThresholds,
    consistency_table,
    image_consistency,
    rank_correlation,
    select_extremes,
    summarise_consistency,
    top_region_iou,
)
from mammography.analysis.faithfulness import (
    SanityResult,
    cascading_randomisation,
    faithfulness,
    occlusion_probabilities,
    randomise_modules,
)
from mammography.analysis.localisation import (
    dice,
    energy_pointing,
    iou,
    localisation_metrics,
    pointing_game,
    summarise_localisation,
    threshold_map,
)
from mammography.analysis.maps import (
    bootstrap_mean_ci,
    map_to_grid,
    mass_share,
    normalise_map,
    resize_mask,
    resize_mask_any,
    top_fraction_mask,
)
from mammography.analysis.patterns import attention_trend, estimate_dense_tissue, pattern_metrics
from mammography.analysis.spurious import (
    SpuriousThresholds,
    border_band,
    detect_markers,
    parse_bbox,
    spurious_shares,
    summarise_spurious,
)
from mammography.errors import ConfigError
from mammography.io.geometry import compute_geometry


def box(shape, r0, c0, r1, c1, value=1.0):
    a = np.zeros(shape)
    a[r0:r1, c0:c1] = value
    return a


# ---------------------------------------------------------------------------
# maps
# ---------------------------------------------------------------------------


def test_normalise_clips_negatives_and_scales_the_peak_to_one():
    h = np.array([[-2.0, 0.0], [1.0, 4.0]])
    assert np.allclose(normalise_map(h), [[0, 0], [0.25, 1.0]])
    assert np.all(normalise_map(-np.ones((2, 2))) == 0)
    assert np.allclose(normalise_map(np.array([[2.0, 3.0], [4.0, 6.0]])), [[0, 0.25], [0.5, 1.0]])  # min-max, as drawn
    assert np.all(normalise_map(np.full((2, 2), 5.0)) == 1)  # uniform attention
    with pytest.raises(ConfigError):
        normalise_map(np.array([[np.nan, 1.0]]))


def test_mass_share_is_mass_in_region_over_total_mass():
    h = np.array([[1.0, 1.0], [2.0, 0.0]])
    region = np.array([[True, False], [True, False]])
    assert mass_share(h, region) == pytest.approx(3 / 4)
    within = np.array([[True, True], [False, False]])
    assert mass_share(h, region, within=within) == pytest.approx(1 / 2)
    assert math.isnan(mass_share(np.zeros((2, 2)), region))
    # a uniform map puts the region's area fraction into it
    assert mass_share(np.ones((10, 10)), box((10, 10), 0, 0, 3, 10).astype(bool)) == pytest.approx(0.3)


def test_top_fraction_region_has_the_right_size_and_keeps_ties_together():
    h = np.arange(100, dtype=float).reshape(10, 10)
    top = top_fraction_mask(h, 0.2)
    assert top.sum() == 20 and top[8:].all()
    ties = np.zeros((10, 10))
    ties[:5] = 1.0  # 50 pixels tie at the maximum: all of them are "top", none of the zeros
    assert top_fraction_mask(ties, 0.2).sum() == 50
    assert top_fraction_mask(np.zeros((4, 4)), 0.2).sum() == 0


def test_bootstrap_interval_contains_the_mean_and_is_reproducible():
    rng = np.random.default_rng(1)
    values = rng.normal(0.4, 0.1, size=200)
    ci = bootstrap_mean_ci(np.append(values, np.nan), seed=3)
    assert ci.n == 200
    assert ci.low < ci.mean < ci.high
    assert ci.mean == pytest.approx(values.mean())
    # about 2 standard errors either side
    se = values.std(ddof=1) / math.sqrt(200)
    assert 3.0 * se < ci.high - ci.low < 5.0 * se
    assert bootstrap_mean_ci(values, seed=3) == bootstrap_mean_ci(values, seed=3)
    single = bootstrap_mean_ci([0.7])
    assert (single.mean, single.low, single.high) == (0.7, 0.7, 0.7)
    assert math.isnan(bootstrap_mean_ci([np.nan]).mean)


def test_map_to_grid_undoes_padding_and_flip():
    geom = compute_geometry((200, 100), 64, flip=True)  # image area: 64 x 32, columns 16..47
    model_map = np.zeros((64, 64), dtype=np.float32)
    model_map[:, 16:24] = 1.0  # left quarter of the image area in model space (flipped)
    grid = map_to_grid(model_map, geom, (128, 64))
    assert grid.shape == (128, 64)
    # the flip is undone: attention is now at the right edge of the image
    assert grid[:, 52:].mean() > 0.9 and grid[:, :40].max() < 0.05


def test_resize_mask_keeps_areas_and_any_keeps_thin_lines():
    m = box((100, 100), 0, 0, 50, 100).astype(bool)
    assert resize_mask(m, (10, 10)).sum() == 50
    line = np.zeros((100, 100), bool)
    line[40, 10:90] = True
    assert resize_mask(line, (10, 10)).sum() == 0
    assert resize_mask_any(line, (10, 10)).sum() == 8


# ---------------------------------------------------------------------------
# localisation
# ---------------------------------------------------------------------------


def test_iou_and_dice_exact_values():
    a = box((10, 10), 0, 0, 4, 4).astype(bool)  # 16 px
    b = box((10, 10), 2, 2, 6, 6).astype(bool)  # 16 px, 4 shared
    assert iou(a, b) == pytest.approx(4 / 28)
    assert dice(a, b) == pytest.approx(8 / 32)
    assert iou(a, a) == 1.0 and dice(a, a) == 1.0
    assert math.isnan(iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)))


def test_thresholded_map_localisation_against_an_roi():
    h = box((10, 10), 0, 0, 4, 4, 1.0) + box((10, 10), 6, 6, 8, 8, 0.3)
    roi = box((10, 10), 0, 0, 4, 8).astype(bool)
    assert threshold_map(h, 0.5).sum() == 16
    res = localisation_metrics(h, roi)
    assert res.iou == pytest.approx(16 / 32)
    assert res.dice == pytest.approx(32 / 48)
    assert res.pointing_hit == 1.0
    assert res.energy_pointing == pytest.approx(16 / (16 + 4 * 0.3))
    assert res.roi_area_share == pytest.approx(0.32)


def test_pointing_game_hit_miss_ties_and_tolerance():
    h = np.zeros((10, 10))
    h[5, 5] = 1.0
    roi = box((10, 10), 0, 0, 3, 3).astype(bool)
    assert pointing_game(h, roi) == 0.0
    assert pointing_game(h, box((10, 10), 5, 5, 6, 6).astype(bool)) == 1.0
    near = box((10, 10), 5, 7, 6, 8).astype(bool)  # 2 px to the right of the peak
    assert pointing_game(h, near) == 0.0
    assert pointing_game(h, near, tolerance=2) == 1.0
    flat = box((10, 10), 0, 0, 2, 4)  # 8 tied maxima, 6 inside the ROI below
    assert pointing_game(flat, box((10, 10), 0, 0, 2, 3).astype(bool)) == 1.0
    assert pointing_game(flat, box((10, 10), 0, 0, 2, 1).astype(bool)) == 0.0
    assert math.isnan(pointing_game(np.zeros((4, 4)), roi[:4, :4]))
    assert energy_pointing(h, roi) == 0.0


def test_localisation_summary_per_class_with_cis():
    rng = np.random.default_rng(0)
    t = pd.DataFrame(
        {
            "y_true": np.repeat([1, 2], 30),
            "iou": np.r_[rng.uniform(0.0, 0.2, 30), rng.uniform(0.6, 0.8, 30)],
            "dice": rng.uniform(size=60),
            "pointing_hit": np.r_[np.zeros(30), np.ones(30)],
            "energy_pointing": rng.uniform(size=60),
        }
    )
    s = summarise_localisation(t).set_index("group")
    assert list(s.index) == ["all", "1", "2"]
    assert s.loc["1", "iou_high"] < s.loc["2", "iou_low"]
    assert s.loc["2", "pointing_hit_mean"] == 1.0 and s.loc["1", "pointing_hit_mean"] == 0.0
    for g in s.index:
        assert s.loc[g, "iou_low"] <= s.loc[g, "iou_mean"] <= s.loc[g, "iou_high"]


# ---------------------------------------------------------------------------
# spurious attention
# ---------------------------------------------------------------------------


def test_border_band_width_is_three_percent_of_each_side():
    band = border_band((200, 100))
    assert band[:6].all() and band[-6:].all() and band[:, :3].all() and band[:, -3:].all()
    assert not band[6:-6, 3:-3].any()


def test_parse_bbox_forms():
    assert parse_bbox("10,20,40,50") == (10, 20, 40, 50)
    assert parse_bbox("[10, 20, 40, 50]") == (10, 20, 40, 50)
    assert parse_bbox((1, 2, 3, 4)) == (1, 2, 3, 4)
    assert parse_bbox("") is None and parse_bbox(float("nan")) is None
    with pytest.raises(ConfigError):
        parse_bbox("1,2,3")
    with pytest.raises(ConfigError):
        parse_bbox("5,5,5,9")


def synthetic_image():
    """A 200 x 160 'mammogram': a breast half-disc on the left, text and a square marker on the right."""
    rows, cols = np.mgrid[:200, :160]
    breast = (rows - 100) ** 2 + (cols * 1.6) ** 2 < 90**2
    pixels = np.where(breast, 0.5, 0.02).astype(np.float32)
    pixels[breast & (cols < 30)] = 1.0  # bright tissue inside the breast is not a marker
    for c in range(130, 150, 4):  # "text": thin vertical strokes
        pixels[10:20, c] = 1.0
    pixels[170:180, 140:150] = 0.97  # a square
    return pixels, breast


def test_detect_markers_finds_text_and_square_outside_the_breast_only():
    pixels, breast = synthetic_image()
    markers, count = detect_markers(pixels, breast)
    assert count == 2
    assert markers[10:20, 130:147].all() and markers[170:180, 140:150].all()
    assert not (markers & breast).any()
    # an image with nothing bright outside the breast has no markers
    clean = np.where(breast, pixels, 0.02).astype(np.float32)
    assert detect_markers(clean, breast)[1] == 0


def test_spurious_shares_of_a_map_on_the_marker():
    pixels, breast = synthetic_image()
    markers, count = detect_markers(pixels, breast)
    on_marker = box((200, 160), 168, 138, 182, 152)
    shares = spurious_shares(on_marker, breast, markers, n_markers=count)
    assert shares.marker > 0.6 and shares.outside_breast == 1.0
    on_breast = breast.astype(float)
    s2 = spurious_shares(on_breast, breast, markers)
    assert s2.marker == 0.0 and s2.outside_breast == 0.0
    uniform = spurious_shares(np.ones((200, 160)), breast, markers)
    assert uniform.marker == pytest.approx(uniform.marker_area)
    assert uniform.border == pytest.approx(uniform.border_area)


def test_run_is_flagged_for_markers_by_enrichment_and_for_other_kinds_by_share_or_rate():
    def table(marker, outside=(0.2,) * 4):
        return pd.DataFrame(
            {
                "outside_breast_share": list(outside),
                "border_share": [0.05] * 4,
                "marker_share": marker,
                "outside_breast_area": [0.5] * 4,
                "border_area": [0.1] * 4,
                "marker_area": [0.01] * 4,
            }
        )

    # marker shares of 0-2 % on markers covering 1 %: at most twice a uniform map, not flagged
    clean = summarise_spurious(table([0.0, 0.01, 0.02, 0.0]))
    assert not clean["flagged"] and clean["reasons"] == [] and clean["marker"]["enrichment"] == pytest.approx(0.75)
    shortcut = summarise_spurious(table([0.5, 0.4, 0.0, 0.3]))
    assert shortcut["flagged"] and shortcut["reasons"] == ["marker"]
    assert shortcut["marker"]["image_flag_rate"] == 0.75 and shortcut["image_flag_rate"] == 0.75
    assert shortcut["marker"]["enrichment"] == pytest.approx(30.0)
    # one image in four far outside the breast: the mean (0.35) is fine, the rate (25 % > 10 %) is not
    one_off = summarise_spurious(table([0.0] * 4, outside=(0.8, 0.2, 0.2, 0.2)))
    assert one_off["reasons"] == ["outside_breast"] and one_off["outside_breast"]["mean"] == pytest.approx(0.35)
    lenient = summarise_spurious(table([0.0] * 4, outside=(0.8, 0.2, 0.2, 0.2)), SpuriousThresholds(max_flag_rate=0.3))
    assert not lenient["flagged"]
    with pytest.raises(ConfigError):
        SpuriousThresholds(marker_enrichment=0.0)
    with pytest.raises(ConfigError):
        SpuriousThresholds(border_ratio=0.0)
    with pytest.raises(ConfigError):
        SpuriousThresholds(max_flag_rate=1.5)


# ---------------------------------------------------------------------------
# consistency
# ---------------------------------------------------------------------------


def blob(center, shape=(40, 40), sigma=5.0):
    r, c = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((r - center[0]) ** 2 + (c - center[1]) ** 2) / (2 * sigma**2))


def test_rank_correlation_and_top_iou_of_equal_shifted_and_opposite_maps():
    a = blob((10, 10))
    assert rank_correlation(a, 3 * a) == pytest.approx(1.0)
    assert top_region_iou(a, a * 2) == pytest.approx(1.0)
    far = blob((30, 30))
    assert rank_correlation(a, far) < 0
    assert top_region_iou(a, far) == 0.0
    assert math.isnan(rank_correlation(a, np.ones_like(a)))
    within = box((40, 40), 0, 0, 20, 20).astype(bool)
    assert rank_correlation(a, a + far, within) > 0.99


def test_image_consistency_classes_and_reasons():
    a, b = blob((10, 10)), blob((11, 10))
    far = blob((30, 30))
    conf = {"42": 0.9, "43": 0.8, "44": 0.7}
    high = image_consistency("x", {"42": a, "43": b, "44": a}, {"42": 3, "43": 3, "44": 3}, conf)
    assert high.agreement == HIGH_AGREEMENT and high.reasons == ()
    assert high.min_rank_correlation > 0.9 and high.min_top_iou > 0.7
    regions = image_consistency("y", {"42": a, "43": far, "44": a}, {"42": 3, "43": 3, "44": 3}, conf)
    assert regions.agreement == LOW_AGREEMENT and regions.reasons == (REASON_REGIONS,)
    preds = image_consistency(
        "z", {"42": a, "43": b, "44": a}, {"42": 3, "43": 2, "44": 3}, conf, artefact_flags={"44": True}
    )
    assert preds.reasons == (REASON_PREDICTIONS, REASON_ARTEFACT)
    assert preds.artefact_runs == ("44",)
    strict = ConsistencyThresholds(min_rank_correlation=0.999, min_top_iou=0.99)
    assert image_consistency("x", {"42": a, "43": b}, {"42": 1, "43": 1}, conf, thresholds=strict).reasons == (
        REASON_REGIONS,
    )
    with pytest.raises(ConfigError):
        image_consistency("x", {"42": a}, {"42": 1}, conf)

    table = consistency_table([regions, preds, high])
    assert list(table["image_path"]) == ["x", "y", "z"]  # most consistent first; disagreement ranks last
    assert {"pred_42", "conf_43", "rho_42_43", "iou_43_44", "agreement", "reasons"} <= set(table.columns)
    summary = summarise_consistency(table)
    assert summary["n_images"] == 3 and summary["n_high_agreement"] == 1
    assert summary["prediction_agreement_rate"] == pytest.approx(2 / 3)
    assert summary["reasons"] == {REASON_PREDICTIONS: 1, REASON_REGIONS: 1, REASON_ARTEFACT: 1}
    most, least = select_extremes(table, n=1)
    assert most == ["x"] and least == ["z"]


# ---------------------------------------------------------------------------
# clinical patterns
# ---------------------------------------------------------------------------


def test_pattern_metrics_exact_values():
    breast = box((10, 10), 0, 0, 10, 5).astype(bool)  # 50 px
    dense = box((10, 10), 0, 0, 5, 5).astype(bool)  # 25 px: half the breast
    h = box((10, 10), 0, 0, 5, 5, 1.0) + box((10, 10), 5, 0, 10, 5, 0.25) + box((10, 10), 0, 5, 10, 10, 1.0)
    h[9, 9] = 0.0  # the map's minimum, outside the breast
    res = pattern_metrics(h, breast, dense)
    assert res.dense_area_share == 0.5
    assert res.dense_mass_share == pytest.approx(25 / (25 + 6.25))  # mass outside the breast does not count
    assert res.dense_margin == pytest.approx(0.8 - 0.5)
    assert res.attended_breast_share == 0.5


def test_dense_tissue_estimate_separates_bright_from_dark_tissue():
    breast = box((20, 20), 0, 0, 20, 10).astype(bool)
    pixels = np.where(breast, 0.3, 0.0)
    pixels[:10, :10] = 0.8
    est = estimate_dense_tissue(pixels, breast)
    assert est.sum() == 100 and est[:10, :10].all()


def test_attention_trend_detects_widening_and_its_absence():
    classes = np.repeat([1, 2, 3, 4], 10)
    rng = np.random.default_rng(0)
    widening = pd.DataFrame({"y_true": classes, "attended_breast_share": 0.1 * classes + rng.normal(0, 0.02, 40)})
    t = attention_trend(widening)
    assert t["widens"] and t["monotonic"] and t["spearman_rho"] > 0.8
    assert "widens from class 1 to class 4" in t["statement"]
    flat = pd.DataFrame({"y_true": classes, "attended_breast_share": rng.uniform(0.2, 0.3, 40)})
    assert not attention_trend(flat)["widens"]


# ---------------------------------------------------------------------------
# faithfulness and sanity
# ---------------------------------------------------------------------------


class RegionModel(nn.Module):
    """Class 1's logit is the mean of channel 0 inside a fixed region; nothing else matters."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("region", region.float())
        self.scale = nn.Parameter(torch.tensor(8.0))

    def forward(self, x):
        inside = (x[:, 0] * self.region).sum((1, 2)) / self.region.sum()
        z = self.scale * (inside - 0.5)
        return torch.stack([-z, z], dim=1)


def region_setup(n: int, s: int = 32):
    """A :class:`RegionModel` reading rows/cols 4-11 of an s x s image, n white images and, per image, a
    square of the same size elsewhere (rows/cols 20-27)."""
    region = torch.zeros(s, s)
    region[4:12, 4:12] = 1.0
    elsewhere = torch.zeros(n, s, s, dtype=torch.bool)
    elsewhere[:, 20:28, 20:28] = True
    return RegionModel(region), region, torch.ones(n, 1, s, s), elsewhere


def test_deletion_of_the_region_the_model_reads_drops_the_score_faster_than_random():
    model, region, images, elsewhere = region_setup(2)
    right = region[None].expand(2, *region.shape).clone()
    res = faithfulness(model, images, right, [1, 1], n_steps=16, seed=0)
    a = res.aucs()
    # 64 of 1024 pixels matter: the score collapses within the first 1/16 of the deletion
    assert res.deletion[0, 0] > 0.98 and res.deletion[0, 2] < 0.05
    assert np.all(a["deletion_auc"] < 0.1) and np.all(a["random_deletion_auc"] > 0.3)
    assert np.all(a["insertion_auc"] > 0.9) and np.all(a["insertion_auc"] > a["random_insertion_auc"])
    s_ = res.summary()
    assert s_["deletion_better_rate"] == 1.0 and s_["insertion_better_rate"] == 1.0
    # a map pointing elsewhere is no better than random order
    w = faithfulness(model, images, elsewhere.float(), [1, 1], n_steps=16, seed=0).aucs()
    assert np.all(w["deletion_auc"] > 0.3)
    assert np.all(np.abs(w["deletion_auc"] - w["random_deletion_auc"]) < 0.2)
    assert len(res.table()) == 2 and list(res.table()["target"]) == [2, 2]


def test_occluding_the_region_a_model_reads_flips_its_prediction_and_flags_the_marker():
    model, region, images, elsewhere = region_setup(3)
    on_region = region.bool().expand(3, *region.shape).clone()
    fill = torch.zeros(3, 1)
    before = torch.softmax(model(images), 1).detach().numpy()
    painted = occlusion_probabilities(model, images, on_region, fill, batch_size=2)
    untouched = occlusion_probabilities(model, images, elsewhere, fill)
    assert np.allclose(untouched, before) and painted.shape == (3, 2)
    assert np.all(before[:, 1] > 0.98) and np.all(painted[:, 1] < 0.02)
    table = pd.DataFrame(
        {
            "outside_breast_share": [0.2] * 3,
            "border_share": [0.05] * 3,
            "marker_share": [0.0] * 3,  # a CAM that misses the marker entirely
            "outside_breast_area": [0.5] * 3,
            "border_area": [0.1] * 3,
            "marker_area": [0.01] * 3,
            "marker_occlusion_drop": before[:, 1] - np.array([painted[0, 1], untouched[1, 1], np.nan]),
        }
    )
    s_ = summarise_spurious(table)
    assert s_["reasons"] == ["marker"] and s_["marker"]["dependence_rate"] == pytest.approx(1 / 3)
    assert s_["marker"]["enrichment"] == 0.0


def test_randomise_modules_is_reproducible_and_leaves_global_rng_alone():
    from mammography.models import build_density_model

    torch.manual_seed(0)
    m1, m2 = build_density_model(), build_density_model()
    m2.load_state_dict(m1.state_dict())
    state = torch.random.get_rng_state()
    randomise_modules(m1, ["classifier.1"], seed=5)
    assert torch.equal(state, torch.random.get_rng_state())
    randomise_modules(m2, ["classifier.1"], seed=5)
    assert torch.equal(m1.classifier[1].weight, m2.classifier[1].weight)
    with pytest.raises(ConfigError):
        randomise_modules(m1, ["no.such.layer"])


def test_cascading_randomisation_separates_model_dependent_maps_from_image_maps():
    from mammography.analysis.faithfulness import cam_explainer
    from mammography.models import build_density_model

    torch.manual_seed(0)
    model = build_density_model().eval()
    images = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([0, 1, 2])
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def image_only(model, x, t):  # an "explanation" that ignores the model: edge magnitude
        return x[:, 0].abs()

    ignored = cascading_randomisation(model, images, targets, explain=image_only, stages=["classifier.1"])
    assert ignored.mean_correlations == [pytest.approx(1.0)]
    assert not ignored.passed
    gradcam = cascading_randomisation(
        model, images, targets, explain=cam_explainer(), stages=["classifier.1", "features.8"]
    )
    assert gradcam.correlations.shape == (2, 3)
    assert gradcam.final_correlation < 0.9
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    assert isinstance(SanityResult(["a"], np.array([[0.1, np.nan]])).summary()["passed"], bool)
