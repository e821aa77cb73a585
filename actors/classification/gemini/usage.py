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

The rows live in llm_cache.db, which can be away (disk full, I/O errors, read-only, locked
by a backup tool). While the tables cannot be read or written the budget cannot be
checked: available() says so, choose_model() answers None, and the classifier answers
with keywords rather than call the model unmetered. Every read and write goes through
faults_as_unavailable, so no storage fault leaves this class; the outage (shared with the
analysis cache: one file, one admin event) is tried again with backoff, and a try that
works writes the spend it could not write before and re-reads today's totals. That
spend (the calls that were in flight when the file went away) waits in memory, summed
by (day, model) and (day, feed), at most MAX_UNWRITTEN_ROWS rows; it is lost only if
the actor dies before the file comes back.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from actors.classification.cache import CACHE_FILE, FEED_USAGE_SCHEMA  # one definition
from actors.errors import StoreUnavailableError
from actors.storage import StoreOutage, faults_as_unavailable, probe, transaction

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
CREATE TABLE IF NOT EXISTS budget_events (
    day TEXT NOT NULL,
    event TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (day, event)
) WITHOUT ROWID;
"""
KEEP_DAYS = 400  # usage history kept for reports
CHARS_PER_TOKEN = 4  # estimate when a response carries no usage metadata
# Spend rows waiting in memory for the file, (day, model) and (day, feed) together. While
# the file is away no call starts, so only the calls in flight when it went add to them:
# a few rows a day. Past the bound per-feed rows go first (the model rows carry the
# budget), oldest day first, and each dropped row is counted and logged.
MAX_UNWRITTEN_ROWS = 1000
STORE_AWAY_EFFECT = ("the daily budget cannot be checked, so the keyword classifier "
                     "answers meanwhile; spend not yet written is kept in memory")

_AWAY = object()  # what _use() answers when the file could not be used

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

    def __init__(self, db: sqlite3.Connection | None, llm: LLMConfig, *, actor: str,
                 admin: AdminFn | None = None, wall: Callable[[], float] = time.time,
                 opener: Callable[[], sqlite3.Connection] | None = None,
                 outage: StoreOutage | None = None):
        """db None: the file is not open (it was away at start); opener opens it when a
        try is due. outage: the file's StoreOutage when another part shares the file
        (the analysis cache), so one outage raises one admin event."""
        self.db = db
        self.opener = opener
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
        self.outage = outage or StoreOutage(CACHE_FILE, notify=self.admin,
                                            effect=STORE_AWAY_EFFECT)
        self.day = utc_day(wall())
        self.announced: set[tuple[str, str]] = set()  # (day, event) already sent
        self.spent_all: dict[str, float] = {}  # today, every llm instance, by model
        self.feed_spent: dict[str, float] = {}  # today, every llm instance, by feed
        self.mine: dict[str, list[float]] = {}  # today, this actor: model -> [calls, in, out, usd]
        # Spend not yet in the file: (day, model) -> [calls, in, out, usd], (day, feed) ->
        # [items, usd]. Summed, and bounded by MAX_UNWRITTEN_ROWS.
        self.unwritten: dict[tuple[str, str], list[float]] = {}
        self.unwritten_feeds: dict[tuple[str, str], list[float]] = {}
        self.dropped_rows = 0
        self.schema_ready = False
        # True while today's totals are not known from the file (not read yet, or a read
        # or write failed since): the budget cannot be checked.
        self.stale = True
        if db is not None:
            self._recover()

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
        calls' cost shared by item) to the feeds' rows; returns the calls' cost. While the
        file is away the rows wait in memory (see the module docstring)."""
        self._roll_day()
        total = 0.0
        for u in usages:
            usd = self.cost(u)
            total += usd
            for tally in (self.mine.setdefault(u.model, [0, 0, 0, 0.0]),
                          self.unwritten.setdefault((self.day, u.model), [0, 0, 0, 0.0])):
                tally[0] += 1
                tally[1] += u.tokens_in
                tally[2] += u.tokens_out
                tally[3] += usd
        if not usages:
            return total
        for feed, (n, usd) in (by_feed or {}).items():
            tally = self.unwritten_feeds.setdefault((self.day, feed), [0, 0.0])
            tally[0] += n
            tally[1] += usd
        self._bound_unwritten()
        if self._blind:
            written = self._recover()  # when a try is due; it checks every budget
        else:
            written = self._write_unwritten()
            if written:
                self._check_budget()
                self._check_feeds(by_feed or {})
        if not written:  # what this actor knows of today counts it until the file is back
            for u in usages:
                self.spent_all[u.model] = self.spent_all.get(u.model, 0.0) + self.cost(u)
            for feed, (_, usd) in (by_feed or {}).items():
                self.feed_spent[feed] = self.feed_spent.get(feed, 0.0) + usd
        return total

    def available(self) -> bool:
        """The spend tables can be read and written, so the budget can be checked. While
        not, a try (open, write what waits, re-read today) is made when one is due."""
        self.outage.settle()
        if self._blind and self.outage.usable():
            self._recover()
        return not self._blind

    def refresh(self) -> None:
        """Re-reads what every llm instance spent today (they share the file)."""
        self._roll_day()
        if self._blind:
            self.available()
            return
        totals = self._use(self._read_totals)
        if totals is not _AWAY:
            self.mine, self.spent_all, self.feed_spent = totals
            self._check_budget()

    def choose_model(self) -> str | None:
        """The model today's budget allows; None: the keyword classifier (also while the
        budget cannot be checked)."""
        self._roll_day()
        if self._blind:
            return None
        for model in (self.model, self.fallback_model):
            if model and self.spent_all.get(model, 0.0) < self.budgets[model]:
                return model
        return None

    def purge(self) -> int:
        """Deletes rows older than KEEP_DAYS (nothing while the file is away)."""
        if self._blind:
            return 0
        cutoff = utc_day(self.wall() - KEEP_DAYS * 86400.0)

        def purge(db: sqlite3.Connection) -> int:
            with transaction(db):
                n = db.execute("DELETE FROM usage WHERE day < ?", (cutoff,)).rowcount
                db.execute("DELETE FROM feed_usage WHERE day < ?", (cutoff,))
                db.execute("DELETE FROM budget_events WHERE day < ?", (cutoff,))
            return n
        removed = self._use(purge)
        return 0 if removed is _AWAY else removed

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
            "usage_store": (self.outage.state if self.outage.down
                            else "unread" if self.stale else "ok"),
            "usage_unwritten_rows": len(self.unwritten) + len(self.unwritten_feeds),
            "usage_unwritten_usd": round(sum(t[3] for t in self.unwritten.values()), 6),
            "usage_unwritten_dropped_rows": self.dropped_rows,
        }

    # Internals ---------------------------------------------------------

    @property
    def _blind(self) -> bool:
        """Today's totals are not known from the file, or the file is away now."""
        return self.stale or self.outage.down

    def _use(self, work: Callable[[sqlite3.Connection], object]):
        """work(connection) with storage faults as StoreUnavailableError; _AWAY when the
        file is not open, no try is due, or it failed (the outage started or continued):
        the totals are stale then, until _recover() works."""
        if self.db is None or not self.outage.usable():
            self.stale = True
            return _AWAY
        try:
            with faults_as_unavailable(CACHE_FILE):
                return work(self.db)
        except StoreUnavailableError as exc:
            self.stale = True
            self.outage.failed(exc)
            return _AWAY

    def _recover(self) -> bool:
        """One try, when one is due, to get the spend tables back: open the file if it
        never opened, one write, the spend that waits written and today's totals re-read.
        Ends the outage; budget events held back meanwhile are sent."""
        if not self.outage.usable():
            return False
        if self.db is None:
            if self.opener is None:
                return False
            try:
                self.db = self.opener()
            except StoreUnavailableError as exc:
                self.stale = True
                self.outage.failed(exc)
                return False

        def writable(db: sqlite3.Connection) -> bool:
            if not self.schema_ready:
                db.executescript(SCHEMA + FEED_USAGE_SCHEMA)
                self.schema_ready = True
            probe(db)  # a full disk still reads: only a write says the file is back
            return True
        if self._use(writable) is _AWAY or not self._write_unwritten():
            return False
        self.stale = False
        self.outage.ok()
        self._check_budget()
        self._check_feeds(self.feed_spent)
        return True

    def _write_unwritten(self) -> bool:
        """Writes the spend that waits in memory (if any) and re-reads today's totals, in
        one transaction; False (the rows still waiting) when the file is away."""
        rows = [(day, model, self.actor, int(t[0]), int(t[1]), int(t[2]), t[3])
                for (day, model), t in self.unwritten.items()]
        feed_rows = [(day, feed, self.actor, int(t[0]), t[1])
                     for (day, feed), t in self.unwritten_feeds.items()]

        def write(db: sqlite3.Connection) -> tuple:
            with transaction(db):
                db.executemany(
                    "INSERT INTO usage (day, model, actor, calls, tokens_in, tokens_out, cost_usd)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, model, actor) DO UPDATE SET"
                    " calls = calls + excluded.calls,"
                    " tokens_in = tokens_in + excluded.tokens_in,"
                    " tokens_out = tokens_out + excluded.tokens_out,"
                    " cost_usd = cost_usd + excluded.cost_usd", rows)
                db.executemany(
                    "INSERT INTO feed_usage (day, feed, actor, items, cost_usd)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (day, feed, actor) DO UPDATE SET"
                    " items = items + excluded.items,"
                    " cost_usd = cost_usd + excluded.cost_usd", feed_rows)
                return self._read_totals(db)
        totals = self._use(write)
        if totals is _AWAY:
            return False
        self.unwritten.clear()
        self.unwritten_feeds.clear()
        self.mine, self.spent_all, self.feed_spent = totals
        return True

    def _bound_unwritten(self) -> None:
        """At most MAX_UNWRITTEN_ROWS rows wait: past it, per-feed rows go first, then the
        oldest day's model rows; each is counted and logged, never dropped silently."""
        while len(self.unwritten) + len(self.unwritten_feeds) > MAX_UNWRITTEN_ROWS:
            table = self.unwritten_feeds or self.unwritten
            key = min(table)
            tally = table.pop(key)
            self.dropped_rows += 1
            log.error("%s unavailable too long: spend of %s on %s ($%.6f) dropped unwritten "
                      "(over %d rows waited)", CACHE_FILE, key[1], key[0], tally[-1],
                      MAX_UNWRITTEN_ROWS)

    def _roll_day(self) -> None:
        day = utc_day(self.wall())
        if day == self.day:
            return
        self.day = day
        self.announced = {seen for seen in self.announced if seen[0] == day}
        self.mine, self.spent_all, self.feed_spent = {}, {}, {}
        if self._blind:
            self.stale = True  # read when the file is back
            return
        totals = self._use(self._read_totals)
        if totals is not _AWAY:
            self.mine, self.spent_all, self.feed_spent = totals

    def _read_totals(self, db: sqlite3.Connection) -> tuple[dict, dict, dict]:
        """Today's spend: this actor's rows by model ([calls, in, out, usd]), and every
        llm instance's by model and by feed."""
        mine = {model: [float(c), float(i), float(o), usd] for model, c, i, o, usd in
                db.execute("SELECT model, calls, tokens_in, tokens_out, cost_usd"
                           " FROM usage WHERE day = ? AND actor = ?", (self.day, self.actor))}
        spent_all = dict(db.execute("SELECT model, SUM(cost_usd) FROM usage WHERE day = ?"
                                    " GROUP BY model", (self.day,)))
        feed_spent = dict(db.execute("SELECT feed, SUM(cost_usd) FROM feed_usage WHERE day = ?"
                                     " GROUP BY feed", (self.day,)))
        return mine, spent_all, feed_spent

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

        def mark(db: sqlite3.Connection) -> bool:
            with transaction(db):
                return db.execute(
                    "INSERT OR IGNORE INTO budget_events (day, event, at) VALUES (?, ?, ?)",
                    (self.day, key, self.wall())).rowcount == 1
        fresh = self._use(mark)
        if fresh is _AWAY:
            return  # checked again when the file is back (_recover)
        self.announced.add((self.day, key))
        if fresh:
            log.warning("%s", message)
            self.admin(event, message, reason=reason, level=level)
