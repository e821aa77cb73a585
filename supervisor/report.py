"""The operator's picture: memory per actor over time with its limit and restart markers,
plus delivered alerts and model usage as the actors last reported them.

Each actor's anonymous resident memory (what its limit, max_rss_mb, and the leak trend
judge) is the solid line; its whole RSS, file-backed pages included, the faint dashed one.
A history saved before anonymous memory was sampled has (time, rss) points only: those are
drawn as RSS alone."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import DateFormatter
from matplotlib.figure import Figure

REASON_COLOURS = {"exit": "tab:red", "hang": "tab:purple", "memory": "tab:orange",
                  "leak": "tab:brown", "manual": "tab:gray",
                  "reload": "tab:olive"}


# Which actor kind's count is the truth for each number (dedupe also counts acks).
COUNTED_BY = {"fetched": "fetcher", "new": "dedupe", "duplicates": "dedupe",
              "delivered": "alert", "filtered": "alert", "charts": "alert", "dead": "dedupe"}


def item_totals(history: dict[str, Any]) -> dict[str, int]:
    """Item counts summed over the actors that own each count."""
    totals = dict.fromkeys(COUNTED_BY, 0)
    for actor in history.get("actors", {}).values():
        for key, kind in COUNTED_BY.items():
            value = actor.get("stats", {}).get(key)
            if actor.get("kind") == kind:
                totals[key] += int(_number(value))
    return totals


def _number(value: Any) -> float:
    """A stat as a number to draw; anything else (text, NaN, infinity) as 0."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else 0.0


def render_report(history: dict[str, Any], path: str | Path) -> Path:
    actors = history.get("actors", {})
    fig = Figure(figsize=(11, 7.5), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 1.4])
    ax = fig.add_subplot(grid[0, :])
    for name, a in actors.items():
        points = [p for p in a.get("timeline") or [] if len(p) >= 2]
        if not points:
            continue
        times = [datetime.fromtimestamp(p[0]) for p in points]
        rss = [p[1] for p in points]
        if all(len(p) >= 3 for p in points):
            line, = ax.plot(times, [p[2] for p in points], label=f"{name} anon", lw=1.2)
            ax.plot(times, rss, color=line.get_color(), ls="--", lw=0.7, alpha=0.5)
        else:
            line, = ax.plot(times, rss, label=f"{name} RSS", lw=1.2)
        ax.axhline(a["max_rss_mb"], color=line.get_color(), ls=":", lw=0.8)
        for t, reason in a["markers"]:
            ax.axvline(datetime.fromtimestamp(t), color=REASON_COLOURS.get(reason, "k"),
                       lw=0.8, alpha=0.8)
            ax.annotate(f"{name}: {reason}", (datetime.fromtimestamp(t), ax.get_ylim()[1]),
                        rotation=90, fontsize=7, va="top", ha="right")
    ax.set_title("Actor memory (MB): solid anonymous (judged), dashed whole RSS; dotted: each "
                 "actor's limit; vertical: restarts by reason", fontsize=10)
    ax.set_ylabel("MB")
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
    ax.legend(loc="upper left", fontsize=8, ncols=4)
    ax.grid(alpha=0.3)
    alerts = fig.add_subplot(grid[1, 0])
    counts = item_totals(history)
    alerts.bar(list(counts), list(counts.values()), color="tab:blue")
    alerts.tick_params(axis="x", labelsize=8)
    alerts.set_title("Items (as last reported)", fontsize=9)
    cost = fig.add_subplot(grid[1, 1])
    usage = {name: _number(a.get("stats", {}).get("cost_usd_today")) for name, a in actors.items()
             if a.get("kind") == "llm"}
    cost.bar(list(usage), list(usage.values()), color="tab:green")
    if not any(usage.values()):
        cost.text(0.5, 0.5, "no model cost (keyword classifier)", ha="center",
                  transform=cost.transAxes, fontsize=9, color="gray")
    cost.set_title("LLM cost today (USD)", fontsize=9)
    fig.subplots_adjust(hspace=0.3, left=0.06, right=0.98, top=0.95, bottom=0.06)
    path = Path(path)
    fig.savefig(path)
    return path
