"""Publication figures: grids of Grad-CAM overlays with headers, labels and a colour bar.

Figures are laid out in inches, not with ``tight_layout``, so the same inputs
always give the same picture, and sized for a journal column: 3.5 in wide at
300 dpi with no text smaller than 6 pt at that width (four tiles per row; a
grid with more columns grows wider, see :func:`figure_width_for`). Every
function returns the :class:`matplotlib.figure.Figure` and a
:class:`FigureLayout` record describing what was drawn (texts, font sizes,
rows), so tests and callers can check a figure without reading pixels.

Three figures are built from one engine, :func:`draw_grid`:

* :func:`class_grid_figure` - rows = density classes, columns = examples
  (``density_gradcam_seed42.png``, ``fold_1_gradcam.png``);
* :func:`layer_grid_figure` - rows = network depths plus the fused map,
  columns = one example per class (``density_gradcam_layers_seed42.png``).
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass, field

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from mammography.errors import ConfigError
from mammography.report.overlay import DisplayTile, get_colormap, tile_label

__all__ = [
    "DPI",
    "COLUMN_WIDTH_IN",
    "MIN_FONT_PT",
    "ERROR_COLOR",
    "ERROR_LEGEND",
    "GridRow",
    "TextItem",
    "RowLayout",
    "FigureLayout",
    "figure_width_for",
    "draw_grid",
    "class_grid_figure",
    "layer_grid_figure",
    "figure_png_bytes",
]

DPI = 300
#: one journal column
COLUMN_WIDTH_IN = 3.5
#: smallest font used anywhere (points at the figure's natural size)
MIN_FONT_PT = 6.0
#: widest figure drawn (two journal columns)
MAX_WIDTH_IN = 7.16

_TITLE_PT = 7.0
_HEADER_PT = 6.5
_LABEL_PT = 6.0
_MARGIN_IN = 0.03
_GAP_IN = 0.03
#: colour of the frame and annotation of a misclassified tile (explained by :data:`ERROR_LEGEND`)
ERROR_COLOR = "#d62728"
ERROR_LEGEND = "a red frame and a red annotation mark a misclassified image (prediction differs from the ground truth)"
_ERROR_FRAME_PT = 1.5
_MIN_TILE_IN = 0.80  # keeps "GT 3 · Pred 3 · 0.87" (about 58 pt at 6 pt) on one line
_EMPTY_ROW_IN = 0.30
_BAR_IN = 0.07
_TICKS_IN = (2.0 + 1.0 + 1.3 * _LABEL_PT) / 72.0  # tick length + pad + tick label line

# The look must not depend on the user's matplotlibrc or installed fonts:
# DejaVu Sans ships with matplotlib, so every machine draws the same glyphs.
_RC = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": _LABEL_PT,
    "axes.linewidth": 0.4,
    "xtick.major.width": 0.4,
    "xtick.major.size": 2.0,
    "xtick.labelsize": _LABEL_PT,
    "image.interpolation": "antialiased",
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
    "text.usetex": False,
    "svg.hashsalt": "mammography",
}


@dataclass
class GridRow:
    """One row of a grid figure.

    Attributes
    ----------
    header : text drawn above the row on the left (e.g. ``"1 (A) · almost entirely fatty"``).
    cells : one entry per column: a :class:`DisplayTile` to draw, or a string
        message drawn in an empty cell (e.g. ``"no validation images"``).
        Fewer cells than columns leave the remaining columns blank.
    note : text drawn above the row on the right (e.g. ``"2 of 4 requested"``).
    message : when set and ``cells`` is empty, drawn across the whole row
        (e.g. ``"no validation images"``).
    show_labels : draw the ``GT · Pred · confidence`` annotation under each tile.
    key : free identifier for the caller (class label, layer name).
    """

    header: str
    cells: list = field(default_factory=list)
    note: str = ""
    message: str = ""
    show_labels: bool = True
    key: object = None


@dataclass(frozen=True)
class TextItem:
    """A text drawn on a figure: its string, size in points and box in inches (x0, y0, x1, y1 from bottom-left)."""

    text: str
    fontsize: float
    bbox_in: tuple[float, float, float, float]
    role: str


@dataclass(frozen=True)
class RowLayout:
    """What one row shows: header, note, row message, per-tile annotations, tiles drawn.

    ``misclassified`` flags, per tile drawn, a tile whose prediction differs
    from its ground truth (drawn with a red frame and a red annotation).
    """

    key: object
    header: str
    note: str
    message: str
    labels: tuple[str, ...]
    n_tiles: int
    misclassified: tuple[bool, ...] = ()


@dataclass(frozen=True)
class FigureLayout:
    """Record of a drawn figure (for tests, captions and the manifest)."""

    width_in: float
    height_in: float
    dpi: int
    title: str
    n_columns: int
    rows: tuple[RowLayout, ...]
    texts: tuple[TextItem, ...]
    colorbar_label: str
    column_headers: tuple[str, ...] = ()

    @property
    def n_misclassified(self) -> int:
        """Tiles drawn whose prediction differs from the ground truth."""
        return sum(sum(r.misclassified) for r in self.rows)

    @property
    def n_tiles(self) -> int:
        """Tiles drawn."""
        return sum(r.n_tiles for r in self.rows)

    @property
    def min_font_pt(self) -> float:
        """Smallest font size of any text on the figure."""
        return min(t.fontsize for t in self.texts)

    @property
    def size_px(self) -> tuple[int, int]:
        """(width, height) in pixels at :attr:`dpi`."""
        return int(self.width_in * self.dpi), int(self.height_in * self.dpi)  # as Agg truncates

    def row(self, key) -> RowLayout:
        """The row whose key is ``key``."""
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(key)


def figure_width_for(n_columns: int) -> float:
    """Figure width in inches: one journal column for up to four tiles per row, wider beyond."""
    if n_columns < 1:
        raise ConfigError("a figure needs at least one column")
    natural = 2 * _MARGIN_IN + n_columns * _MIN_TILE_IN + (n_columns - 1) * _GAP_IN
    return round(min(MAX_WIDTH_IN, max(COLUMN_WIDTH_IN, natural)), 3)


def _text(fig: Figure, x: float, y: float, text: str, **kwargs) -> Text:
    """``fig.text`` that draws ``text`` as it is: ``$`` never starts maths (file names reach the figures)."""
    return fig.text(x, y, text, parse_math=False, **kwargs)


def _line_in(pt: float, lines: int = 1) -> float:
    return lines * pt * 1.3 / 72.0


def _text_width_in(text: str, fontsize: float, weight: str = "normal") -> float:
    """Width of ``text`` in inches when drawn in the figure font at ``fontsize``."""
    with matplotlib.rc_context(_RC):
        # measured at the output resolution: glyph hinting makes text wider at low dpi
        fig = Figure(figsize=(1, 1), dpi=DPI)
        canvas = FigureCanvasAgg(fig)
        t = _text(fig, 0, 0, text, fontsize=fontsize, fontweight=weight)
        return t.get_window_extent(canvas.get_renderer()).width / DPI


def _wrap(text: str, fontsize: float, width_in: float, weight: str = "normal") -> list[str]:
    """Split ``text`` into lines no wider than ``width_in``: first at ' · ' separators, then at spaces."""

    def fits(s: str) -> bool:
        return _text_width_in(s, fontsize, weight) <= width_in

    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for part in paragraph.split(" \u00b7 "):
            candidate = part if not current else f"{current} \u00b7 {part}"
            if fits(candidate) or not current:
                current = candidate
            else:
                lines.append(current)
                current = part
        lines.append(current)
    out: list[str] = []
    for line in lines:
        if fits(line):
            out.append(line)
            continue
        # still too wide (a long run id): wrap at spaces, or inside words, at the measured ratio
        chars = max(8, int(len(line) * width_in / _text_width_in(line, fontsize, weight)) - 1)
        out.extend(textwrap.wrap(line, chars, break_long_words=True, break_on_hyphens=False))
    return out


def draw_grid(
    rows: list[GridRow],
    *,
    title: str,
    n_columns: int | None = None,
    colormap: str = "jet",
    alpha: float = 0.4,
    colorbar_label: str = "Grad-CAM attention (normalised per image): 0 = lowest, 1 = highest",
    column_headers: list[str] | None = None,
    width_in: float | None = None,
) -> tuple[Figure, FigureLayout]:
    """Draw a grid of overlay tiles with row headers, annotations and a colour bar.

    Parameters
    ----------
    rows : the rows, top to bottom.
    title : figure title; wrapped at ' · ' to fit the width.
    n_columns : number of tile columns (default: the longest row).
    colormap, alpha : heatmap colour map and blend weight (see :func:`~mammography.report.overlay.blend`).
    colorbar_label : text under the colour bar.
    column_headers : optional text above each column (first row only); ``"\\n"``
        starts another line (every column gets the height of the tallest).
    width_in : figure width; default :func:`figure_width_for` ``(n_columns)``.

    Returns
    -------
    (figure, layout)
    """
    get_colormap(colormap)  # fail early with a clear message
    if not rows:
        raise ConfigError("a figure needs at least one row")
    n_columns = n_columns or max(1, max(len(r.cells) for r in rows))
    width = width_in or figure_width_for(n_columns)
    tile_w = (width - 2 * _MARGIN_IN - (n_columns - 1) * _GAP_IN) / n_columns
    aspects = [c.aspect for r in rows for c in r.cells if isinstance(c, DisplayTile)]
    # every tile box gets the tallest image's aspect, so no image is squashed
    tile_h = tile_w * float(np.clip(max(aspects, default=1.25), 0.5, 2.0))
    inner_w = width - 2 * _MARGIN_IN

    with matplotlib.rc_context(_RC):
        title_lines = _wrap(title, _TITLE_PT, inner_w, "bold")
        bar_label_lines = _wrap(colorbar_label, _LABEL_PT, inner_w)
        # --- heights, top to bottom ---------------------------------------
        height = _MARGIN_IN + _line_in(_TITLE_PT, len(title_lines)) + _GAP_IN
        # each header line wrapped to its column (at ' · ' first), so neighbours never overlap
        headers = ["\n".join(_wrap(str(t), _HEADER_PT, tile_w)) for t in column_headers or ()]
        header_lines = max((t.count("\n") + 1 for t in headers), default=0)
        height += _line_in(_HEADER_PT, header_lines)
        row_specs = []
        for r in rows:
            tiles_here = bool(r.cells)
            labels = [tile_label(c.y_true, c.y_pred, c.confidence) for c in r.cells if isinstance(c, DisplayTile)]
            two_line = r.show_labels and any(_text_width_in(s, _LABEL_PT) > tile_w - 0.02 for s in labels)
            label_h = _line_in(_LABEL_PT, 2 if two_line else 1) if (r.show_labels and tiles_here) else 0.0
            body_h = tile_h if tiles_here else _EMPTY_ROW_IN
            row_specs.append((r, _line_in(_HEADER_PT), body_h, label_h, two_line))
            height += _line_in(_HEADER_PT) + body_h + label_h + _GAP_IN
        height += _GAP_IN + _BAR_IN + _TICKS_IN + _line_in(_LABEL_PT, len(bar_label_lines)) + _GAP_IN + _MARGIN_IN
        # a whole number of pixels: Agg truncates width/height x dpi, so aim a quarter pixel above
        height = (math.ceil(height * DPI) + 0.25) / DPI

        fig = Figure(figsize=(width, height), dpi=DPI)
        FigureCanvasAgg(fig)

        def fx(x_in: float) -> float:
            return x_in / width

        def fy(y_top_in: float) -> float:  # distance from the top -> figure fraction from the bottom
            return 1.0 - y_top_in / height

        y = _MARGIN_IN
        _text(fig, 0.5, fy(y), "\n".join(title_lines), fontsize=_TITLE_PT, ha="center", va="top",
              fontweight="bold", linespacing=1.15, gid="title")
        y += _line_in(_TITLE_PT, len(title_lines)) + _GAP_IN
        col_x = [_MARGIN_IN + j * (tile_w + _GAP_IN) for j in range(n_columns)]
        if headers:
            for j, text in enumerate(headers[:n_columns]):
                _text(fig, fx(col_x[j] + tile_w / 2), fy(y), text, fontsize=_HEADER_PT, ha="center", va="top",
                      linespacing=1.15, gid="column_header")
            y += _line_in(_HEADER_PT, header_lines)

        # One axes spanning the figure in inches (y down from the top) holds every tile:
        # far cheaper than an axes per tile, and tiles sit exactly where the layout says.
        board = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        board.set_axis_off()
        board.set_autoscale_on(False)
        row_layouts = []
        for r, header_h, body_h, label_h, two_line in row_specs:
            _text(fig, fx(_MARGIN_IN), fy(y), r.header, fontsize=_HEADER_PT, ha="left", va="top",
                  fontweight="bold", gid="row_header")
            if r.note:
                _text(fig, fx(width - _MARGIN_IN), fy(y), r.note, fontsize=_LABEL_PT, ha="right", va="top",
                      style="italic", gid="row_note")
            y += header_h
            labels: list[str] = []
            misclassified: list[bool] = []
            if not r.cells:
                _text(fig, 0.5, fy(y + body_h / 2), r.message or "no images", fontsize=_LABEL_PT, ha="center",
                      va="center", color="0.3", gid="row_message")
            for j, cell in enumerate(r.cells[:n_columns]):
                if isinstance(cell, DisplayTile):
                    x0, y0, w, h = _fit_box(cell.aspect, col_x[j], y, tile_w, body_h)
                    board.imshow(cell.rgb(alpha, colormap), extent=(x0, x0 + w, y0 + h, y0),
                                 origin="upper", interpolation="antialiased", aspect="auto")
                    wrong = cell.y_true != cell.y_pred
                    misclassified.append(wrong)
                    if wrong:
                        # inside the tile, so neighbouring tiles and labels are never covered
                        inset = _ERROR_FRAME_PT / 72.0 / 2
                        board.add_patch(Rectangle((x0 + inset, y0 + inset), w - 2 * inset, h - 2 * inset, fill=False,
                                                  edgecolor=ERROR_COLOR, linewidth=_ERROR_FRAME_PT, gid="error_frame"))
                    if r.show_labels:
                        text = tile_label(cell.y_true, cell.y_pred, cell.confidence)
                        labels.append(text)
                        shown = text
                        if two_line:
                            head, _, conf = text.rpartition(" \u00b7 ")
                            shown = f"{head}\n{conf}"
                        _text(fig, fx(col_x[j] + tile_w / 2), fy(y + body_h + 0.01), shown, fontsize=_LABEL_PT,
                              ha="center", va="top", linespacing=1.1, color=ERROR_COLOR if wrong else "black",
                              gid="tile_label")
                else:
                    _text(fig, fx(col_x[j] + tile_w / 2), fy(y + body_h / 2),
                          "\n".join(_wrap(str(cell), _LABEL_PT, tile_w)),
                          fontsize=_LABEL_PT, ha="center", va="center", color="0.3", gid="cell_message")
            y += body_h + label_h + _GAP_IN
            n_tiles = sum(isinstance(c, DisplayTile) for c in r.cells[:n_columns])
            row_layouts.append(RowLayout(key=r.key, header=r.header, note=r.note,
                                         message=(r.message if not r.cells else ""),
                                         labels=tuple(labels), n_tiles=n_tiles,
                                         misclassified=tuple(misclassified)))

        board.set_xlim(0.0, width)
        board.set_ylim(height, 0.0)

        # --- colour bar: horizontal, full width, 0..1 ----------------------
        y += _GAP_IN  # keeps the last row's annotations clear of the bar
        bar_w = inner_w * 0.8
        cax = fig.add_axes((fx((width - bar_w) / 2), fy(y + _BAR_IN), fx(bar_w), _BAR_IN / height))
        mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=get_colormap(colormap))
        cbar = fig.colorbar(mappable, cax=cax, orientation="horizontal", ticks=[0, 0.25, 0.5, 0.75, 1.0])
        cbar.ax.set_xticklabels(["0", "0.25", "0.5", "0.75", "1"])
        cbar.ax.tick_params(labelsize=_LABEL_PT, pad=1.0)
        cbar.outline.set_linewidth(0.4)
        y += _BAR_IN + _TICKS_IN
        _text(fig, 0.5, fy(y), "\n".join(bar_label_lines), fontsize=_LABEL_PT, ha="center", va="top",
              linespacing=1.1, gid="colorbar_label")

        texts = _collect_texts(fig)
    layout = FigureLayout(width_in=width, height_in=height, dpi=DPI, title=title, n_columns=n_columns,
                          rows=tuple(row_layouts), texts=texts, colorbar_label=colorbar_label,
                          column_headers=tuple(column_headers or ()))
    return fig, layout


def _fit_box(aspect: float, x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    """(x0, y0, width, height) of an image of ``aspect`` (height / width) centred in a box, aspect kept."""
    if aspect * w <= h:
        return x, y + (h - aspect * w) / 2, w, aspect * w
    return x + (w - h / aspect) / 2, y, h / aspect, h


def _collect_texts(fig: Figure) -> tuple[TextItem, ...]:
    """Every visible, non-empty text of ``fig`` with its size and box in inches."""
    renderer = fig.canvas.get_renderer()
    # text boxes do not depend on the pictures: skip resampling the images in this pass
    images = [im for ax in fig.axes for im in ax.get_images() if im.get_visible()]
    for im in images:
        im.set_visible(False)
    try:
        fig.draw_without_rendering()
    finally:
        for im in images:
            im.set_visible(True)
    items = []
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip():
            continue
        bb = t.get_window_extent(renderer)
        dpi = fig.dpi
        items.append(TextItem(text=t.get_text(), fontsize=float(t.get_fontsize()),
                              bbox_in=(bb.x0 / dpi, bb.y0 / dpi, bb.x1 / dpi, bb.y1 / dpi),
                              role=t.get_gid() or "axis"))
    return tuple(items)


def class_grid_figure(
    rows: list[GridRow],
    *,
    title: str,
    n_columns: int,
    colormap: str = "jet",
    alpha: float = 0.4,
    colorbar_label: str = "Grad-CAM attention (normalised per image): 0 = lowest, 1 = highest",
) -> tuple[Figure, FigureLayout]:
    """Rows = density classes, columns = example validation images.

    Each :class:`GridRow` has ``key`` = class label (1..4), ``header`` e.g.
    ``"1 (A) · almost entirely fatty"``, ``cells`` the selected tiles, ``note``
    e.g. ``"2 of 4 requested"`` and, when the class has no validation images,
    ``message = "no validation images"``.
    """
    return draw_grid(rows, title=title, n_columns=n_columns, colormap=colormap, alpha=alpha,
                     colorbar_label=colorbar_label)


def layer_grid_figure(
    rows: list[GridRow],
    *,
    title: str,
    column_headers: list[str],
    colormap: str = "jet",
    alpha: float = 0.4,
    colorbar_label: str = "Grad-CAM attention (normalised per image and layer): 0 = lowest, 1 = highest",
) -> tuple[Figure, FigureLayout]:
    """Rows = network depths (plus the fused map), columns = one example per class.

    The same image appears down each column, so only the last row carries the
    ``GT · Pred · confidence`` annotations (set ``show_labels`` on the rows).
    """
    return draw_grid(rows, title=title, n_columns=len(column_headers), colormap=colormap, alpha=alpha,
                     colorbar_label=colorbar_label, column_headers=column_headers)


def figure_png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes at ``dpi`` without software/date metadata (same figure, same bytes)."""
    return png_from_rgba(figure_rgba(fig, dpi))


def figure_rgba(fig: Figure, dpi: int = DPI) -> np.ndarray:
    """Draw ``fig`` at ``dpi``: uint8 (H, W, 4), the pixels ``savefig`` would encode.

    Drawing reads matplotlib's global settings, so it happens in the calling
    thread; :func:`png_from_rgba` may then run in another.
    """
    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="rgba", dpi=dpi)
    # the Agg canvas is the figure's size in inches times dpi, truncated (as RendererAgg does)
    width, height = (int(v) for v in fig.get_size_inches() * dpi)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(height, width, 4)


def png_from_rgba(rgba: np.ndarray, dpi: int = DPI) -> bytes:
    """PNG bytes of a drawn figure, as ``savefig`` writes them (dpi recorded, no software/date
    metadata; zlib level 3: about half the time of the default 6 for a few per cent more bytes).
    Only Pillow runs here, which releases the GIL while it compresses: safe in a worker thread."""
    from PIL import Image, PngImagePlugin

    image = Image.frombuffer("RGBA", (rgba.shape[1], rgba.shape[0]), np.require(rgba, requirements="C"),
                             "raw", "RGBA", 0, 1)
    buf = io.BytesIO()
    image.save(buf, format="png", pnginfo=PngImagePlugin.PngInfo(), dpi=(dpi, dpi), compress_level=3)
    return buf.getvalue()
