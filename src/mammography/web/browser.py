"""Drive an explorer site in headless Chromium: screenshots and timings.

Used by the tests, by ``bench/bench_web.py`` and by whoever takes the README
screenshot. Needs Playwright for Python (the ``test`` extra) and a system
Chromium (Debian's ``chromium`` package; Playwright's own browser download is
never used): set ``MAMMOGRAPHY_CHROMIUM`` to use another binary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mammography.errors import ConfigError

__all__ = [
    "CHROMIUM_ARGS",
    "chromium_path",
    "launch_chromium",
    "open_site",
    "wait_for_image_view",
    "save_screenshot",
    "SiteTimings",
    "measure_site",
    "site_size",
]

#: flags for a quiet, offline, sandbox-free headless Chromium (CI runs as root)
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)


def chromium_path() -> Path | None:
    """The Chromium binary: ``$MAMMOGRAPHY_CHROMIUM``, else ``chromium`` on PATH,
    else ``/usr/bin/chromium``; None when none exists."""
    for candidate in (os.environ.get("MAMMOGRAPHY_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@contextlib.contextmanager
def launch_chromium() -> Iterator[object]:
    """A headless Chromium browser (Playwright sync API), closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise ConfigError("driving the explorer in a browser needs Playwright: pip install -e '.[test]'") from exc
    exe = chromium_path()
    if exe is None:
        raise ConfigError("no Chromium found; install it (apt-get install chromium) or set MAMMOGRAPHY_CHROMIUM")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(exe), args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


def _index(site_dir: str | Path) -> Path:
    index = Path(site_dir).resolve() / "index.html"
    if not index.is_file():
        raise ConfigError(f"{site_dir} holds no index.html; build the site first with 'mammography explore'")
    return index


def open_site(browser, site_dir: str | Path, hash: str = "", width: int = 1400, height: int = 900):
    """A new page showing the site from file:// (``hash`` without ``#``), after its first render."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(_index(site_dir).as_uri() + (f"#{hash}" if hash else ""))
    page.wait_for_selector("html[data-ready='1']", timeout=60_000)
    return page


def wait_for_image_view(page, timeout_ms: int = 30_000) -> None:
    """Wait until the open image's heatmaps are drawn."""
    page.wait_for_selector("#viewer[data-drawn]", timeout=timeout_ms)


def save_screenshot(
    site_dir: str | Path,
    png_path: str | Path,
    *,
    image: str | None = "first",
    hash: str = "",
    width: int = 1400,
    height: int = 900,
    browser=None,
) -> Path:
    """Screenshot the explorer (e.g. for the README).

    Parameters
    ----------
    site_dir : the site folder.
    png_path : where the PNG is written (folders are created).
    image : ``"first"`` opens the first image of the table, an image key
        (``"i00012"``) opens that one, None keeps the table.
    hash : state to open, e.g. ``"outcome=wrong&layer=fused&opacity=0.6"``.
    width, height : viewport in CSS pixels.
    browser : a Playwright browser to use (default: launch Chromium for this).
    """
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if browser is None:
            browser = stack.enter_context(launch_chromium())
        page = open_site(browser, site_dir, hash=hash, width=width, height=height)
        try:
            if image == "first":
                page.click("#list-body tr[data-key]")
            elif image:
                page.evaluate("k => { location.hash = location.hash.replace(/^#/, '') + '&img=' + k; }", image)
            if image:
                wait_for_image_view(page)
            page.screenshot(path=str(png_path))
        finally:
            page.close()
    return png_path


def site_size(site_dir: str | Path) -> tuple[int, int]:
    """(number of files, total bytes) of a site folder."""
    files = [p for p in Path(site_dir).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


@dataclass(frozen=True)
class SiteTimings:
    """What :func:`measure_site` measured (milliseconds are medians over the repeats).

    Attributes
    ----------
    n_images : images in the site.
    n_files, bytes : size on disk.
    first_render_ms : navigation start to the table's first render (the page's
        own ``performance.now()`` when its first render returned; includes
        parsing ``data.js``).
    first_paint_ms : first contentful paint, as the browser reports it.
    load_wall_ms : wall time from ``goto`` to the page being ready, seen from Python.
    open_image_ms : click on a row to every seed's heatmap drawn and painted
        (the page's clock; includes loading the image's maps script).
    filter_ms : change of a filter to the next frame after the table was
        re-rendered (the page's clock).
    start_requests, start_bytes : files the page loaded until its first
        render plus the thumbnails of the first table page (what a visitor
        downloads before touching anything), and their size on disk.
    """

    n_images: int
    n_files: int
    bytes: int
    first_render_ms: float
    first_paint_ms: float | None
    load_wall_ms: float
    open_image_ms: float
    filter_ms: float
    start_requests: int = 0
    start_bytes: int = 0


def _file_size(url: str) -> int:
    from urllib.parse import unquote, urlparse

    path = Path(unquote(urlparse(url).path))
    return path.stat().st_size if path.is_file() else 0


# timed inside the page (its own clock), so Playwright's round trips do not count
_FILTER_JS = """() => new Promise(done => {
  const t0 = performance.now(), select = document.getElementById('f-outcome');
  select.value = 'wrong';
  select.dispatchEvent(new Event('change'));
  requestAnimationFrame(() => done(performance.now() - t0));
})"""
_OPEN_JS = """() => new Promise(done => {
  const viewer = document.getElementById('viewer');
  const t0 = performance.now();
  const seen = new MutationObserver(() => {
    if (viewer.dataset.drawn) { seen.disconnect(); requestAnimationFrame(() => done(performance.now() - t0)); }
  });
  seen.observe(viewer, { attributes: true });
  document.querySelector('#list-body tr[data-key]').click();
})"""


def measure_site(site_dir: str | Path, repeats: int = 3) -> SiteTimings:
    """Time the site in headless Chromium, each repeat in a fresh page (no warm cache)."""
    site_dir = Path(site_dir)
    index = _index(site_dir)
    first, paint, wall, open_ms, filt = [], [], [], [], []
    n_images = 0
    start_urls: list[str] = []
    with launch_chromium() as browser:
        for _ in range(max(1, repeats)):
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            urls: list[str] = []
            page.on("request", lambda r, urls=urls: urls.append(r.url))
            t0 = time.perf_counter()
            page.goto(index.as_uri())
            page.wait_for_selector("html[data-ready='1']", timeout=120_000)
            wall.append((time.perf_counter() - t0) * 1000)
            page.wait_for_load_state("load")  # lazy thumbnails in view have been fetched
            start_urls = list(dict.fromkeys(urls))
            first.append(page.evaluate("window.__mammoFirstRender"))
            fcp = page.evaluate(
                "(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null"
            )
            if fcp is not None:
                paint.append(fcp)
            n_images = page.evaluate("window.MAMMO_SITE.images.length")
            filt.append(page.evaluate(_FILTER_JS))
            page.select_option("#f-outcome", "")
            open_ms.append(page.evaluate(_OPEN_JS))
            context.close()
    n_files, size = site_size(site_dir)
    return SiteTimings(
        n_images=n_images,
        n_files=n_files,
        bytes=size,
        first_render_ms=statistics.median(first),
        first_paint_ms=statistics.median(paint) if paint else None,
        load_wall_ms=statistics.median(wall),
        open_image_ms=statistics.median(open_ms),
        filter_ms=statistics.median(filt),
        start_requests=len(start_urls),
        start_bytes=sum(_file_size(u) for u in start_urls),
    )
