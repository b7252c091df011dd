"""The explorer in a real browser: headless Chromium driven by Playwright.

Uses the system Chromium (Debian's package, installed by .ci/run); the module
is skipped where there is none. The site is the one test_web_explorer.py
builds from three real (briefly trained) runs; a second, hand-made site
checks that a heatmap lands on the right side of a mirrored breast.
"""

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mammography.web.browser import CHROMIUM_ARGS, chromium_path, save_screenshot

pytestmark = pytest.mark.browser

if chromium_path() is None:
    pytest.skip("no Chromium binary (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

from test_web_explorer import real_site  # noqa: E402  (shared, cached real-run site)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium_path()), args=list(CHROMIUM_ARGS))
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder, _, _ = real_site(tmp_path_factory)
    text = (folder / "data.js").read_text()
    data = json.loads(text[len("window.MAMMO_SITE = "):].rstrip().rstrip(";"))
    return folder, data


class Page:
    """A page with every console error, page error and requested URL recorded."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors, self.urls = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

        def route(r):
            self.urls.append(r.request.url)
            r.continue_()

        self.page.route("**/*", route)
        self.page.goto(url)
        self.page.wait_for_selector("html[data-ready='1']")

    def count(self) -> int:
        return int(self.page.get_attribute("#count", "data-count"))

    def open_first(self) -> str:
        key = self.page.get_attribute("#list-body tr[data-key]", "data-key")
        self.page.click("#list-body tr[data-key]")
        self.page.wait_for_selector("#viewer[data-drawn]")
        return key

    def overlay_pixels(self, index: int = 0) -> np.ndarray:
        """RGBA pixels of the index-th panel's heatmap canvas."""
        url = self.page.evaluate(
            "i => document.querySelectorAll('#v-panels canvas.overlay')[i].toDataURL('image/png')", index
        )
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
            return np.asarray(im.convert("RGBA"))


@pytest.fixture
def page(browser, site):
    p = Page(browser, (site[0] / "index.html").as_uri())
    yield p
    assert p.errors == [], f"console errors: {p.errors}"
    assert all(u.startswith("file://") for u in p.urls), [u for u in p.urls if not u.startswith("file://")]
    p.page.close()


def expected_count(images, seeds, *, seed="all", truth="", pred="", outcome="", agree=""):
    """The page's filter, written again in Python from the site's data."""
    n = 0
    for r in images:
        if seed == "all":
            p = r["m"]
        else:
            p = r["p"][[s["key"] for s in seeds].index(seed)]
            if p is None:
                continue
        if truth and r["t"] != int(truth):
            continue
        if pred and p != int(pred):
            continue
        if outcome == "correct" and p != r["t"] or outcome == "wrong" and p == r["t"]:
            continue
        if agree == "agree" and r["pa"] != 1 or agree == "disagree" and not (r["pa"] is not None and r["pa"] < 1):
            continue
        if agree == "high" and r["af"] != 1 or agree == "low" and r["af"] != 0:
            continue
        n += 1
    return n


def test_page_loads_without_errors_and_lists_every_image(page, site):
    _, data = site
    assert page.count() == len(data["images"]) == page.page.locator("#list-body tr").count()
    assert page.page.inner_text("#total") == str(len(data["images"]))
    # one prediction column per seed in the table
    assert page.page.locator("#list-head th").count() == 3 + len(data["seeds"]) + 3


@pytest.mark.parametrize(
    "filters",
    [
        {"truth": "2"},
        {"truth": "3", "outcome": "wrong"},
        {"seed": "seed43", "pred": "4"},
        {"seed": "seed42", "outcome": "correct"},
        {"agree": "disagree"},
        {"agree": "low"},
    ],
)
def test_filters_change_the_visible_count_to_the_right_number(page, site, filters):
    _, data = site
    ids = {"seed": "#f-seed", "truth": "#f-true", "pred": "#f-pred", "outcome": "#f-outcome", "agree": "#f-agree"}
    for name, value in filters.items():
        page.page.select_option(ids[name], value)
    want = expected_count(data["images"], data["seeds"], **filters)
    assert page.count() == want
    assert page.page.locator("#list-body tr").count() == want
    for name, value in filters.items():  # the URL keeps the filter
        key = {"truth": "truth"}.get(name, name)
        assert f"{key}={value}" in page.page.evaluate("location.hash")


def test_sorting_by_confidence_orders_the_rows(page, site):
    _, data = site
    page.page.select_option("#f-seed", "seed42")
    page.page.select_option("#f-sort", "conf-asc")
    keys = page.page.eval_on_selector_all("#list-body tr", "rows => rows.map(r => r.dataset.key)")
    conf = {r["k"]: r["c"][0] for r in data["images"]}
    assert [conf[k] for k in keys] == sorted(conf[k] for k in keys)


def test_opening_an_image_shows_one_heatmap_panel_per_seed(page, site):
    _, data = site
    page.open_first()
    panels = page.page.locator("#v-panels figure.panel")
    assert panels.count() == len(data["seeds"])
    assert [panels.nth(i).get_attribute("data-seed") for i in range(panels.count())] == [
        s["key"] for s in data["seeds"]]
    for i in range(panels.count()):
        px = page.overlay_pixels(i)
        assert px.shape[:2] == (data["images"][0]["h"], data["images"][0]["w"])
        assert (px[..., 3] == 255).all()  # the whole image is covered
        assert page.page.evaluate(
            "i => document.querySelectorAll('#v-panels img.base')[i].naturalWidth", i) > 0
    assert page.page.locator("#v-panels svg.roi path").count() == len(data["seeds"])  # expert ROI outlined


def test_opacity_slider_changes_the_overlay_opacity(page):
    page.open_first()
    opacity = "document.querySelector('#v-panels canvas.overlay') && getComputedStyle(document.querySelector('#v-panels canvas.overlay')).opacity"
    assert float(page.page.evaluate(opacity)) == pytest.approx(0.5)
    page.page.fill("#v-opacity", "0.8")
    assert float(page.page.evaluate(opacity)) == pytest.approx(0.8)
    assert "opacity=0.8" in page.page.evaluate("location.hash")


def test_colour_map_and_layer_switches_repaint_the_overlay(page):
    page.open_first()
    jet = page.overlay_pixels()
    page.page.select_option("#v-cmap", "gray")
    page.page.wait_for_selector("#viewer[data-drawn]")
    gray = page.overlay_pixels()
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert not (jet[..., 0] == jet[..., 2]).all()
    page.page.select_option("#v-layer", "features.4")
    page.page.wait_for_selector("#viewer[data-drawn]")
    assert not np.array_equal(page.overlay_pixels(), gray)


def test_the_url_reopens_the_same_view(browser, site):
    folder, data = site
    key = data["images"][-1]["k"]
    p = Page(browser, (folder / "index.html").as_uri() + f"#outcome=wrong&img={key}&layer=fused&cmap=viridis")
    p.page.wait_for_selector("#viewer[data-drawn]")
    assert p.page.input_value("#f-outcome") == "wrong"
    assert p.page.input_value("#v-layer") == "fused" and p.page.input_value("#v-cmap") == "viridis"
    assert p.page.get_attribute("#viewer", "data-drawn") == key
    p.page.keyboard.press("Escape")
    assert p.page.is_hidden("#viewer") and "img=" not in p.page.evaluate("location.hash")
    assert p.errors == []
    p.page.close()


def test_served_over_http_on_loopback_with_no_other_requests(browser, site):
    from mammography.web.serve import start_server

    server, url = start_server(site[0], port=0)
    try:
        p = Page(browser, url + "index.html")
        p.open_first()
        assert p.errors == []
        assert p.urls and all(u.startswith(url) for u in p.urls)
        p.page.close()
    finally:
        server.shutdown()
        server.server_close()


def test_heatmap_lands_on_the_right_side_of_a_mirrored_breast(browser, tmp_path):
    """A right breast is mirrored in model space; the page must undo that for the map too."""
    from mammography.io.geometry import compute_geometry
    from mammography.web.site import SeedResult, SiteImage, SiteLayer, SiteSeed, build_site

    g = compute_geometry((64, 32), 64, flip=True)  # content in columns 16..47 of the square
    heat = np.zeros((8, 8))
    heat[:, 2] = 1.0  # hot near the square's left content edge = the image's right edge once unflipped
    square = np.zeros((64, 64), np.float32)
    img = SiteImage("r.dcm", 1, square, {"s": SeedResult(1, 0.9, maps={"L": heat})}, geometry=g)
    build_site(tmp_path / "s", [img], [SiteSeed("s", "s")], [SiteLayer("L", "L")], display_height=128)
    p = Page(browser, (tmp_path / "s" / "index.html").as_uri() + "#img=i00000&cmap=gray")
    p.page.wait_for_selector("#viewer[data-drawn]")
    px = p.overlay_pixels()[..., 0].astype(float)  # gray: value = R
    assert px.shape == (128, 64)
    column = px.mean(0)
    # model column 2 of 8 -> square x = 2.5/8 = 0.3125 -> content fraction (0.3125-0.25)/0.5 = 0.125,
    # mirrored back: 0.875 of the display width
    assert np.argmax(column) == pytest.approx(0.875 * 64, abs=2)
    assert column[:32].mean() < 10 < column[48:].mean()
    assert p.errors == []
    p.page.close()


def test_screenshot_of_the_explorer_is_saved(browser, site):
    png = save_screenshot(site[0], REPO / "test-artifacts" / "explorer.png", image="first", browser=browser)
    with Image.open(png) as im:
        assert im.size == (1400, 900)
        rgb = np.asarray(im.convert("RGB").resize((64, 40))).reshape(-1, 3)
        assert len(np.unique(rgb, axis=0)) > 50  # a drawn page, not a blank one
