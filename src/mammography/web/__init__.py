"""The explorer: a static site over every validation image of one or more runs.

>>> from mammography.web import build_explorer
>>> summary = build_explorer(["outputs/mammo_efficientnetb0_density/results"], "explorer")
>>> summary.index                      # open it in a browser; no server needed

* :func:`build_explorer` (:mod:`~mammography.web.data`): runs -> Grad-CAM,
  attention numbers -> site. What ``mammography explore`` and
  ``report-pack --site`` call.
* :func:`build_site` (:mod:`~mammography.web.site`): the site writer, fed
  plain records (:class:`SiteImage`, :class:`SiteSeed`, :class:`SiteLayer`).
* :func:`start_server` and ``mammography.web.serve.serve`` (:mod:`~mammography.web.serve`):
  serve a site on 127.0.0.1 (``mammography.web.serve`` is the module, so the
  blocking ``serve`` function is imported from it).
* :func:`save_screenshot` / :func:`measure_site` (:mod:`~mammography.web.browser`):
  drive a site in headless Chromium (needs Playwright and a Chromium binary).

Names are imported on first use, so ``import mammography.web`` stays light.
"""

from __future__ import annotations

from mammography._lazy import lazy_exports

_EXPORTS = {
    "build_explorer": "data",
    "iter_site_images": "data",
    "load_runs": "data",
    "seed_columns": "data",
    "site_layers": "data",
    "DEFAULT_LAYERS": "data",
    "build_site": "site",
    "SiteImage": "site",
    "SiteSeed": "site",
    "SiteLayer": "site",
    "SeedResult": "site",
    "SiteSummary": "site",
    "start_server": "serve",
    "save_screenshot": "browser",
    "measure_site": "browser",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, {k: f"{__name__}.{v}" for k, v in _EXPORTS.items()})
