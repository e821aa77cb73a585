"""The usage monitor: tokens and dollars per model, per feed and UTC day, and the budgets.

Usage rows live in the llm actors' SQLite file, one row per (day, model, actor) and one
per (day, feed, actor), so the numbers survive restarts and every llm instance sees what
all of them spent. The budget picks the model: the configured one until its daily budget
is spent, then the cheaper fallback model until its own budget is spent, then None (the
keyword classifier).

Per-feed caps keep one source from spending the day's budget (a flooding or hostile
wire): a feed may spend llm.feed_daily_budget_fraction of the day's whole model budget
(daily_budget_usd, plus fallback_daily_budget_usd when there is a fallback model) a UTC
day, on every model together, unless llm.feed_daily_budget_usd names its own cap. A call's
cost is shared among its items by their token counts (split_cost()); a feed at its cap
gets the keyword classifier until 00:00 UTC. A cap is checked before a request, so the
calls in flight when it is reached may overshoot it by their own cost.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from actors.storage import transaction

if TYPE_CHECKING:
    from catalyst_config import LLMConfig

log = logging.getLogger("catalyst.llm")

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    actor TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, model, actor)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feed_usage (
    day TEXT NOT NULL,
    feed TEXT NOT NULL,
    actor TEXT NOT NULL,
    items INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, feed, actor)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS budget_events (
    day TEXT NOT NULL,
    event TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (day, event)
) WITHOUT ROWID;
"""
KEEP_DAYS = 400  # usage history kept for reports
CHARS_PER_TOKEN = 4  # estimate when a response carries no usage metadata

AdminFn = Callable[..., None]  # Actor.admin(event, message, reason=, level=)


@dataclass(frozen=True)
class Usage:
    """What one model call consumed, from the response's usage metadata."""

    model: str
    tokens_in: int
    tokens_out: int  # candidates + thinking tokens: both are billed as output
    estimated: bool = False


def split_cost(cost_in: float, cost_out: float, in_weights: dict[int, int],
               out_weights: dict[int, int]) -> dict[int, float]:
    """A call's input and output cost shared among its items by their weights (token
    counts, or characters standing for them); evenly where every weight is 0."""
    shares: dict[int, float] = dict.fromkeys([*in_weights, *out_weights], 0.0)
    for cost, weights in ((cost_in, in_weights), (cost_out, out_weights)):
        if not weights:
            continue
        total = sum(weights.values())
        for pos, w in weights.items():
            shares[pos] += cost * (w / total if total > 0 else 1 / len(weights))
    return shares


def utc_day(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).strftime("%Y-%m-%d")


class UsageMonitor:
    """Records usage and cost; says which model today's budget still allows."""

    def __init__(self, db: sqlite3.Connection, llm: LLMConfig, *, actor: str,
                 admin: AdminFn | None = None, wall: Callable[[], float] = time.time):
        self.db = db
        self.pricing = llm.pricing
        self.model = llm.model
        self.fallback_model = llm.fallback_model
        self.budgets = {llm.model: llm.daily_budget_usd}
        if llm.fallback_model:
            self.budgets.setdefault(llm.fallback_model, llm.fallback_daily_budget_usd)
        self.warn_fraction = llm.budget_warn_fraction
        # A fraction of 1 is no cap at all (not the whole budget, which the day's last
        # calls may overshoot).
        self.feed_cap_default = (llm.feed_daily_budget_fraction * sum(self.budgets.values())
                                 if llm.feed_daily_budget_fraction < 1 else math.inf)
        self.feed_caps = {feed: max(0.0, usd) for feed, usd in llm.feed_daily_budget_usd.items()}
        self.actor = actor
        self.admin = admin or (lambda *a, **k: None)
        self.wall = wall
        db.executescript(SCHEMA)
        self.day = ""
        self.announced: set[tuple[str, str]] = set()  # (day, event) already sent
        self.spent_all: dict[str, float] = {}  # today, every llm instance, by model
        self.feed_spent: dict[str, float] = {}  # today, every llm instance, by feed
        self.mine: dict[str, list[float]] = {}  # today, this actor: model -> [calls, in, out, usd]
        self.refresh()

    def cost(self, usage: Usage) -> float:
        return sum(self.cost_parts(usage))

    def cost_parts(self, usage: Usage) -> tuple[float, float]:
        """(input, output) cost of a call in USD."""
        price = self.pricing[usage.model]  # check-config guarantees every model is priced
        return (usage.tokens_in * price.input_usd_per_mtok / 1e6,
                usage.tokens_out * price.output_usd_per_mtok / 1e6)

    def feed_cap(self, feed: str) -> float:
        """USD the feed may spend a UTC day, on every model together."""
        return self.feed_caps.get(feed, self.feed_cap_default)

    def feed_capped(self, feed: str) -> bool:
        """The feed has spent its daily cap: its items get the keyword classifier."""
        self._roll_day()
        return self.feed_spent.get(feed, 0.0) >= self.feed_cap(feed)

    def record(self, usages: list[Usage], by_feed: dict[str, tuple[int, float]] | None = None
               ) -> float:
        """Adds the calls' usage to today's rows, and by_feed (feed -> items, USD: the same
        calls' cost shared by item) to the feeds' rows; returns the calls' cost."""
        self._roll_day()
        total = 0.0
        rows = []
        for u in usages:
            usd = self.cost(u)
            total += usd
            rows.append((self.day, u.model, self.actor, u.tokens_in, u.tokens_out, usd))
            mine = self.mine.setdefault(u.model, [0, 0, 0, 0.0])
            mine[0] += 1
            mine[1] += u.tokens_in
            mine[2] += u.tokens_out
            mine[3] += usd
        if rows:
            with transaction(self.db):
                self.db.executemany(
                    "INSERT INTO usage (day, model, actor, calls, tokens_in, tokens_out, cost_usd)"
                    " VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (day, model, actor) DO UPDATE SET"
                    " calls = calls + 1, tokens_in = tokens_in + excluded.tokens_in,"
                    " tokens_out = tokens_out + excluded.tokens_out,"
                    " cost_usd = cost_usd + excluded.cost_usd", rows)
                if by_feed:
                    self.db.executemany(
                        "INSERT INTO feed_usage (day, feed, actor, items, cost_usd)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (day, feed, actor) DO UPDATE SET"
                        " items = items + excluded.items,"
                        " cost_usd = cost_usd + excluded.cost_usd",
                        [(self.day, feed, self.actor, n, usd)
                         for feed, (n, usd) in by_feed.items()])
                self._load_spent()
            self._check_budget()
            self._check_feeds(by_feed or {})
        return total

    def refresh(self) -> None:
        """Re-reads what every llm instance spent today (they share the file)."""
        self._roll_day()
        self._load_spent()
        self._check_budget()

    def choose_model(self) -> str | None:
        """The model today's budget allows; None: the keyword classifier."""
        self._roll_day()
        for model in (self.model, self.fallback_model):
            if model and self.spent_all.get(model, 0.0) < self.budgets[model]:
                return model
        return None

    def purge(self) -> int:
        cutoff = utc_day(self.wall() - KEEP_DAYS * 86400.0)
        with transaction(self.db):
            n = self.db.execute("DELETE FROM usage WHERE day < ?", (cutoff,)).rowcount
            self.db.execute("DELETE FROM feed_usage WHERE day < ?", (cutoff,))
            self.db.execute("DELETE FROM budget_events WHERE day < ?", (cutoff,))
        return n

    def stats(self) -> dict:
        mine = self.mine.values()
        return {
            "tokens_in": sum(int(m[1]) for m in mine),
            "tokens_out": sum(int(m[2]) for m in mine),
            "cost_usd_today": round(sum(m[3] for m in mine), 6),
            "cost_usd_today_by_model": {k: round(m[3], 6) for k, m in self.mine.items()},
            "cost_usd_today_all_instances": round(sum(self.spent_all.values()), 6),
            "cost_usd_today_by_feed": {k: round(v, 6) for k, v in self.feed_spent.items()},
            "feeds_at_cap": sorted(f for f in {*self.feed_spent, *self.feed_caps}
                                   if self.feed_spent.get(f, 0.0) >= self.feed_cap(f)),
            "model_in_use": self.choose_model() or "keywords",
        }

    # Internals ---------------------------------------------------------

    def _roll_day(self) -> None:
        day = utc_day(self.wall())
        if day == self.day:
            return
        self.day = day
        self.announced = {seen for seen in self.announced if seen[0] == day}
        self.mine = {model: [float(c), float(i), float(o), usd] for model, c, i, o, usd in
                     self.db.execute("SELECT model, calls, tokens_in, tokens_out, cost_usd"
                                     " FROM usage WHERE day = ? AND actor = ?",
                                     (day, self.actor))}
        self._load_spent()

    def _load_spent(self) -> None:
        self.spent_all = dict(self.db.execute(
            "SELECT model, SUM(cost_usd) FROM usage WHERE day = ? GROUP BY model", (self.day,)))
        self.feed_spent = dict(self.db.execute(
            "SELECT feed, SUM(cost_usd) FROM feed_usage WHERE day = ? GROUP BY feed",
            (self.day,)))

    def _check_feeds(self, feeds) -> None:
        for feed in feeds:
            spent, cap = self.feed_spent.get(feed, 0.0), self.feed_cap(feed)
            if spent >= cap:
                self._once("llm_feed_budget_cap", "warning",
                           f"feed {feed!r} spent ${spent:.4f} of its ${cap:.4f} daily share "
                           "of the model budget; the keyword classifier answers its items "
                           "until 00:00 UTC", key=f"llm_feed_budget_cap:{feed}",
                           reason="feed_budget")

    def _check_budget(self) -> None:
        primary = self.spent_all.get(self.model, 0.0)
        budget = self.budgets[self.model]
        if budget > 0 and primary >= self.warn_fraction * budget:
            self._once("llm_budget_warning", "warning",
                       f"{self.model} has spent ${primary:.4f} of its ${budget:.2f} daily "
                       f"budget today ({self.day} UTC)")
        if primary >= budget:
            then = (f"switching to {self.fallback_model}" if self.fallback_model
                    else "the keyword classifier answers until 00:00 UTC")
            self._once("llm_budget_cap", "warning",
                       f"{self.model} reached its ${budget:.2f} daily budget; {then}")
        fallback = self.fallback_model
        if fallback and self.spent_all.get(fallback, 0.0) >= self.budgets[fallback] \
                and primary >= budget:
            self._once("llm_budget_exhausted", "error",
                       f"{fallback} also reached its ${self.budgets[fallback]:.2f} daily "
                       "budget; the keyword classifier answers until 00:00 UTC")

    def _once(self, event: str, level: str, message: str, *, key: str | None = None,
              reason: str = "budget") -> None:
        """An admin event at most once a UTC day per key (default: the event), across
        every llm instance."""
        key = key or event
        if (self.day, key) in self.announced:
            return
        self.announced.add((self.day, key))
        with transaction(self.db):
            fresh = self.db.execute(
                "INSERT OR IGNORE INTO budget_events (day, event, at) VALUES (?, ?, ?)",
                (self.day, key, self.wall())).rowcount == 1
        if fresh:
            log.warning("%s", message)
            self.admin(event, message, reason=reason, level=level)
