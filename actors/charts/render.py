"""Alert charts: intraday price with VWAP, previous close and the news time, over volume.

Rendered with matplotlib's object-oriented API (a Figure with its own Agg canvas) and never
pyplot, so it is safe in a worker thread, needs no backend switch, and leaves no global figure
behind. Each thread redraws one figure of its own rather than building one per chart (see
_per_thread). The PNG is written atomically: a reader sees the old chart or the new one.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
import threading
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
from matplotlib import dates as mdates
from matplotlib import ticker as mticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from actors.charts.prices import PriceSeries

EASTERN = ZoneInfo("America/New_York")
FIGSIZE_IN = (8.0, 4.5)
DPI = 100
TITLE_CHARS = 95
PNG_COMPRESS_LEVEL = 3  # zlib level: 6 (the default) costs ~15 ms more for ~10% smaller files

CLOSE_COLOR = "#1f4e79"
VWAP_COLOR = "#e67e22"
PREV_CLOSE_COLOR = "#6b6b6b"
NEWS_COLOR = "#c0392b"
UP_COLOR = "#2e8b57"
DOWN_COLOR = "#c0504d"

# matplotlib date numbers are days since its epoch (1970-01-01 unless configured otherwise).
_EPOCH_DAYS = float(mdates.date2num(datetime.fromtimestamp(0, timezone.utc)))


def _to_datenum(epoch_seconds: np.ndarray | float) -> np.ndarray | float:
    return np.asarray(epoch_seconds, dtype=float) / 86400.0 + _EPOCH_DAYS


def _eastern(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, EASTERN).strftime("%H:%M")


def _volume_label(value: float, _pos: object = None) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e3:
        return f"{value / 1e3:.0f}K"
    return f"{value:.0f}"


def _decimals(highest_price: float) -> int:
    """Sub-dollar stocks quote to 4 decimals; one chart uses one precision throughout."""
    return 2 if highest_price >= 1 else 4


def _price_text(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def vwap(high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray) -> np.ndarray:
    """Cumulative volume-weighted average of the typical price; the plain mean where no volume."""
    typical = (high + low + close) / 3.0
    cum_volume = np.cumsum(volume)
    cum_value = np.cumsum(typical * volume)
    mean = np.cumsum(typical) / np.arange(1, len(typical) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cum_volume > 0, cum_value / np.where(cum_volume > 0, cum_volume, 1), mean)


def render_chart(series: PriceSeries, *, title: str, ticker: str, news_time: float | None,
                 path: str | os.PathLike[str]) -> Path:
    """Draws the chart for one alert into ``path`` (a PNG) and returns the path.

    Raises ValueError when the series has no bars: there is nothing to draw, and the caller
    sends its alert without a chart. One bar is enough for a (short) chart.
    """
    if not series.bars:
        raise ValueError(f"no price bars for {ticker}")
    chart = getattr(_per_thread, "chart", None)
    if chart is None:
        chart = _per_thread.chart = _ChartFigure()
    try:
        chart.draw(series, title=title, ticker=ticker, news_time=news_time)
        written = _write_png_atomically(chart.fig, Path(path))
    except BaseException:
        _per_thread.chart = None  # a half-drawn figure is not worth repairing; build anew
        raise
    chart.clear()
    return written


# Each thread keeps one figure and redraws it: building axes and their ticks is most of a
# fresh figure's cost, and a fresh figure per chart leaves ~6,000 objects of cyclic garbage
# whose batched collection stalls the whole process for ~100 ms every dozen charts.
_per_thread = threading.local()


class _ChartFigure:
    """A price panel over a volume panel, styled once; draw() adds one chart's artists."""

    def __init__(self) -> None:
        self.fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, facecolor="white")
        FigureCanvasAgg(self.fig)
        grid = self.fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.06,
                                     left=0.035, right=0.905, top=0.835, bottom=0.085)
        self.ax = ax = self.fig.add_subplot(grid[0])
        self.axv = axv = self.fig.add_subplot(grid[1], sharex=ax)
        for axis in (ax, axv):
            axis.yaxis.tick_right()
            axis.tick_params(labelsize=8, length=0, pad=4)
            axis.set_axisbelow(True)
            for side in ("top", "left"):
                axis.spines[side].set_visible(False)
        ax.yaxis.set_major_locator(mticker.MaxNLocator(nbins=6, steps=(1, 2, 2.5, 5, 10)))
        ax.tick_params(axis="x", labelbottom=False)
        ax.set_ymargin(0.12)  # headroom for the news label above the highest price
        ax.grid(True, color="#e3e3e3", lw=0.6)
        axv.yaxis.set_major_locator(mticker.MaxNLocator(2, integer=True))
        axv.yaxis.set_major_formatter(mticker.FuncFormatter(_volume_label))
        axv.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=EASTERN))
        axv.grid(True, axis="x", color="#e3e3e3", lw=0.6)
        axv.text(0.005, 0.92, "Volume", transform=axv.transAxes, fontsize=7.5, color="#555555",
                 va="top")
        axv.text(1.0, -0.30, "ET", transform=axv.transAxes, fontsize=7.5, color="#555555",
                 ha="left", va="top")
        self._static = {id(a) for a in (*ax.texts, *axv.texts)}
        self._volume_width_px = axv.get_position().width * FIGSIZE_IN[0] * DPI

    def clear(self) -> None:
        """Removes everything draw() added, leaving the styled, empty figure."""
        for axis in (self.ax, self.axv):
            for artist in (*axis.lines, *axis.collections, *axis.texts):
                if id(artist) not in self._static:
                    artist.remove()
        if self.ax.get_legend() is not None:
            self.ax.get_legend().remove()
        for text in list(self.fig.texts):
            text.remove()
        self.ax.relim()
        self.ax.set_autoscaley_on(True)

    def draw(self, series: PriceSeries, *, title: str, ticker: str,
             news_time: float | None) -> None:
        bars = series.bars
        t = np.fromiter((b.t for b in bars), dtype=float, count=len(bars))
        opens = np.fromiter((b.o for b in bars), dtype=float, count=len(bars))
        high = np.fromiter((b.h for b in bars), dtype=float, count=len(bars))
        low = np.fromiter((b.l for b in bars), dtype=float, count=len(bars))
        close = np.fromiter((b.c for b in bars), dtype=float, count=len(bars))
        volume = np.fromiter((b.v for b in bars), dtype=float, count=len(bars))
        step = float(np.median(np.diff(t))) if len(t) > 1 else 60.0
        x = _to_datenum(t + step / 2)  # each bar at its middle

        decimals = _decimals(max(float(high.max()), series.previous_close or 0.0))
        pad = max(step, 300.0 if len(t) == 1 else 0.0) / 86400.0
        self.ax.set_xlim(_to_datenum(t[0]) - pad, _to_datenum(t[-1] + step) + pad)
        self._draw_price(x, close, vwap(high, low, close, volume), series.previous_close,
                         decimals)
        self._draw_volume(x, volume, close >= opens)
        news_price = self._draw_news(t, opens, step, news_time)
        self._set_time_axis(t[-1] - t[0] + step)
        self._draw_header(ticker, title, close[-1], series.previous_close, news_time,
                          news_price, decimals)

    def _draw_price(self, x, close, vwap_line, previous_close, decimals) -> None:
        ax = self.ax
        ax.plot(x, close, color=CLOSE_COLOR, lw=1.4, label="Price", zorder=3,
                marker="o" if len(x) == 1 else None, ms=4)
        ax.plot(x, vwap_line, color=VWAP_COLOR, lw=1.2, label="VWAP", zorder=2)
        if previous_close is not None:
            ax.axhline(previous_close, color=PREV_CLOSE_COLOR, lw=1.0, ls=(0, (5, 3)),
                       label=f"Prev close {_price_text(previous_close, decimals)}", zorder=1)
        ax.yaxis.set_major_formatter(
            mticker.FuncFormatter(lambda v, _p: _price_text(v, decimals)))
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=4, frameon=False,
                  fontsize=8, handlelength=1.8, borderaxespad=0.2, columnspacing=1.2)

    def _draw_volume(self, x, volume, up) -> None:
        lw = float(np.clip(0.8 * self._volume_width_px / max(len(x), 1) * 72.0 / DPI, 0.4, 6.0))
        self.axv.vlines(x, 0, volume, colors=np.where(up, UP_COLOR, DOWN_COLOR), lw=lw,
                        alpha=0.8)
        self.axv.set_ylim(0, max(float(volume.max()), 1.0) * 1.1)

    def _draw_news(self, t, opens, step, news_time) -> float | None:
        """Marks the news time when it falls on the chart; returns the price as it broke."""
        if news_time is None or not (t[0] - step <= news_time <= t[-1] + step):
            return None
        xn = _to_datenum(news_time)
        for axis in (self.ax, self.axv):
            axis.axvline(xn, color=NEWS_COLOR, lw=1.1, alpha=0.8, zorder=2.5)
        lo, hi = self.ax.get_xlim()
        right_half = xn > (lo + hi) / 2  # keep the label inside, away from the price ticks
        self.ax.text(xn, 0.985, f"News {_eastern(news_time)} ET",
                     transform=self.ax.get_xaxis_transform(), color=NEWS_COLOR, fontsize=8,
                     fontweight="bold", va="top", ha="right" if right_half else "left", zorder=5,
                     bbox={"boxstyle": "square,pad=0.2", "fc": "white", "ec": "none",
                           "alpha": 0.85})
        index = int(np.clip(np.searchsorted(t, news_time, side="right") - 1, 0, len(t) - 1))
        return float(opens[index])

    def _set_time_axis(self, span_s: float) -> None:
        if span_s > 3 * 3600:
            locator = mdates.HourLocator(tz=EASTERN)
        elif span_s > 3600:
            locator = mdates.MinuteLocator(byminute=(0, 30), tz=EASTERN)
        else:
            locator = mdates.AutoDateLocator(tz=EASTERN, minticks=3, maxticks=7)
        self.axv.xaxis.set_major_locator(locator)

    def _draw_header(self, ticker, title, last, previous_close, news_time, news_price,
                     decimals) -> None:
        fig = self.fig
        headline = textwrap.shorten(" ".join(title.split()), width=TITLE_CHARS, placeholder="...")
        label = fig.text(0.035, 0.955, ticker, fontsize=13, fontweight="bold", va="baseline")
        # the headline starts where the ticker ends: measuring one text is cheap (no full draw)
        ticker_px = label.get_window_extent(fig.canvas.get_renderer()).width
        fig.text(0.035 + (ticker_px + 8) / (FIGSIZE_IN[0] * DPI), 0.955, headline, fontsize=10,
                 va="baseline", color="#222222")
        parts = [f"Last {_price_text(last, decimals)}"]
        if previous_close:
            parts.append(f"{(last / previous_close - 1) * 100:+.1f}% vs prev close")
        if news_price:
            parts.append(f"{(last / news_price - 1) * 100:+.1f}% since news")
        elif news_time is not None:
            parts.append(f"news {_eastern(news_time)} ET (off chart)")
        fig.text(0.035, 0.895, "   ".join(parts), fontsize=8.5, color="#555555", va="baseline")


def _write_png_atomically(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI,
                        pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; charts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
