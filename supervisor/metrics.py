"""Prometheus exposition of the supervisor's view, read at scrape time.

Follows Prometheus's naming conventions: a count that only grows is a counter (``_total``),
a level that goes up and down is a gauge, and units are in the name (``_seconds``,
``_bytes``, ``_usd``). Each actor's numeric stats (its heartbeat) are mapped by name to
such metrics in the tables below; a stat not in them is left out rather than exported
with a guessed type.

Memory, per actor: catalyst_actor_anon_bytes is its anonymous resident memory, what the
memory limit (max_rss_mb) and the leak trend judge; catalyst_actor_rss_bytes is its whole
resident set, file-backed pages (mapped files, shared libraries) included;
catalyst_actor_expected_memory_bytes is what it holds by design (an index of live data), and
catalyst_actor_memory_trend_bytes_per_second the leak trend, net of that.

Latency: the alert actor reports fixed-bucket histograms of fetch-to-alert and
publication-to-alert seconds; they are summed over alert instances here.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)

from supervisor.handle import REASONS, ActorState
from supervisor.watch import MB

PACKAGE = "catalyst-supervisor"
BREAKER_STATES = ("closed", "open", "half_open")

# Stats every actor may report (actors/base.py counters).
COMMON_COUNTERS = {
    "bad_messages": ("catalyst_actor_bad_messages", "Malformed frames an actor refused"),
    "failed_commands": ("catalyst_actor_failed_commands", "Control commands that failed"),
    "curve_refused": ("catalyst_actor_curve_refused_peers",
                      "tcp peers refused: their key is not in curve.public_keys_dir"),
    "curve_handshake_failed": ("catalyst_actor_curve_handshake_failures",
                               "tcp peers refused in the CurveZMQ handshake (no or wrong keys)"),
}

# Per kind: stat name -> (metric name, help). Counters get ``_total`` from the client.
COUNTERS: dict[str, dict[str, tuple[str, str]]] = {
    "fetcher": {
        "cycles_done": ("catalyst_fetcher_cycles", "Fetch cycles completed"),
        "polls": ("catalyst_fetcher_polls", "Feed polls done"),
        "fetched": ("catalyst_fetcher_fetched_items", "Items fetched from feeds"),
        "feed_errors": ("catalyst_fetcher_feed_errors", "Feed polls that failed"),
        "claim_retries": ("catalyst_fetcher_claim_retries", "Claims sent to dedupe again"),
        "claimed_new": ("catalyst_fetcher_claimed_new_items",
                        "Items dedupe claimed as new"),
        "claims_deferred": ("catalyst_fetcher_claims_deferred", "Claims put off for later"),
        "claims_split": ("catalyst_fetcher_claims_split", "Claims split for size"),
        "items_refused": ("catalyst_fetcher_refused_items", "Items refused (too large)"),
    },
    "dedupe": {
        "claimed": ("catalyst_dedupe_claimed_items", "Items claimed against the ledger"),
        "new": ("catalyst_dedupe_new_items", "Claimed items that were new"),
        "duplicates": ("catalyst_dedupe_duplicate_items", "Claimed items already seen"),
        "marked_seen_first_poll": ("catalyst_dedupe_marked_seen_first_poll_items",
                                   "Items marked seen on a feed's first poll"),
        "forward_deferred": ("catalyst_dedupe_forward_deferred_items",
                             "Items whose forward downstream was put off"),
        "dead": ("catalyst_dedupe_dead_letters", "Items dead-lettered"),
        "dead_too_large": ("catalyst_dedupe_dead_letters_too_large",
                           "Items dead-lettered for size"),
        "delivered": ("catalyst_dedupe_delivered_items", "Items finished as delivered"),
        "filtered": ("catalyst_dedupe_filtered_items", "Items finished as filtered"),
        "acks_dropped": ("catalyst_dedupe_acks_dropped", "Acks dropped (the item comes back)"),
        "late_acks": ("catalyst_dedupe_late_acks", "Acks for items already finished"),
        "redelivered": ("catalyst_dedupe_redelivered_items", "Items sent again after a lease"),
        "replayed": ("catalyst_dedupe_replayed_items", "Dead letters replayed"),
        "purged": ("catalyst_dedupe_purged_keys", "Expired keys purged from the ledger"),
        "store_outages": ("catalyst_dedupe_store_outages", "Ledger store outages"),
    },
    "llm": {
        "calls": ("catalyst_llm_calls", "Model calls"),
        "classified_gemini": ("catalyst_llm_classified_gemini_items", "Items Gemini classified"),
        "classified_rules": ("catalyst_llm_classified_rules_items",
                             "Items the keyword rules classified"),
        "invalid_answers": ("catalyst_llm_invalid_answers", "Model answers that were invalid"),
        "invalid_retries": ("catalyst_llm_invalid_retries", "Calls retried after an invalid answer"),
        "retries": ("catalyst_llm_retries", "Model calls retried"),
        "coalesced": ("catalyst_llm_coalesced_items", "Items coalesced with one in flight"),
        "usage_estimated": ("catalyst_llm_usage_estimated", "Calls whose usage was estimated"),
        "isolated_items": ("catalyst_llm_isolated_items", "Items retried alone"),
        "steered_batches": ("catalyst_llm_steered_batches", "Batches steered to another model"),
        "fallbacks": ("catalyst_llm_fallbacks", "Items classified by the fallback"),
        "cache_hits": ("catalyst_llm_cache_hits", "Analysis cache hits"),
        "cache_misses": ("catalyst_llm_cache_misses", "Analysis cache misses"),
        "cache_invalidated": ("catalyst_llm_cache_invalidated", "Cache entries invalidated"),
        "cache_purged": ("catalyst_llm_cache_purged", "Expired cache entries purged"),
        "cache_writes_skipped": ("catalyst_llm_cache_writes_skipped",
                                 "Cache writes skipped while its store was away"),
        "usage_unwritten_dropped_rows": ("catalyst_llm_usage_dropped_rows",
                                         "Usage rows dropped unwritten"),
    },
    "alert": {
        "delivered": ("catalyst_alert_delivered", "Alerts delivered to every sink"),
        "filtered": ("catalyst_alert_filtered", "Items no sink took"),
        "held_unacked": ("catalyst_alert_held_unacked", "Alerts a sink could not take, held"),
        "redelivery_merged": ("catalyst_alert_redelivery_merged",
                              "Redelivered items merged with one still here"),
        "redelivered_in": ("catalyst_alert_redelivered_in", "Redelivered items received"),
        "charts": ("catalyst_alert_charts", "Charts attached"),
        "chart_timeouts": ("catalyst_alert_chart_timeouts", "Charts too late to attach"),
        "chart_errors": ("catalyst_alert_chart_errors", "Charts that failed"),
        "charts_pruned": ("catalyst_alert_charts_pruned", "Old chart files removed"),
        "skipped_disabled_sink": ("catalyst_alert_skipped_disabled_sink",
                                  "Alerts skipped by a disabled sink"),
        "busy_elsewhere": ("catalyst_alert_busy_elsewhere",
                           "Alerts another instance was delivering"),
        "sink_errors": ("catalyst_alert_sink_errors", "Sink deliveries that failed"),
        "sinks_disabled": ("catalyst_alert_sinks_disabled", "Sinks disabled"),
        "acks_dropped": ("catalyst_alert_acks_dropped", "Acks dropped (the item comes back)"),
        "journal_purged": ("catalyst_alert_journal_purged", "Old journal rows purged"),
        "journal_release_failed": ("catalyst_alert_journal_release_failed",
                                   "Journal releases that failed"),
        "journal_outages": ("catalyst_alert_journal_outages", "Delivery journal outages"),
    },
}

GAUGES: dict[str, dict[str, tuple[str, str]]] = {
    "fetcher": {
        "unconfirmed_batches": ("catalyst_fetcher_unconfirmed_batches",
                                "Batches sent to dedupe, not yet confirmed"),
        "backlog_bytes": ("catalyst_fetcher_backlog_bytes", "Bytes waiting to go to dedupe"),
        "polls_in_flight": ("catalyst_fetcher_polls_in_flight", "Feed polls under way"),
        "last_cycle_s": ("catalyst_fetcher_last_cycle_seconds", "Duration of the last cycle"),
    },
    "dedupe": {
        "pending": ("catalyst_ledger_pending_items",
                    "Items in the ledger not yet delivered or filtered"),
        "live_keys": ("catalyst_dedupe_live_keys", "Keys the ledger remembers"),
        "acks_held": ("catalyst_dedupe_acks_held", "Acks waiting for the ledger"),
    },
    "llm": {
        "outbox": ("catalyst_llm_outbox_items", "Classified items waiting to go to alert"),
        "backlog": ("catalyst_llm_backlog_items", "Items waiting for a model call"),
        "in_flight": ("catalyst_llm_in_flight_calls", "Model calls under way"),
        "cache_size": ("catalyst_llm_cache_entries", "Entries in the analysis cache"),
        "cost_usd_today": ("catalyst_llm_spend_today_usd",
                           "Model spend of this instance today (resets at UTC midnight)"),
        "cost_usd_today_all_instances": ("catalyst_llm_spend_today_all_instances_usd",
                                         "Model spend of every instance today"),
        "tokens_in": ("catalyst_llm_input_tokens_today", "Input tokens used today"),
        "tokens_out": ("catalyst_llm_output_tokens_today", "Output tokens used today"),
        "usage_unwritten_rows": ("catalyst_llm_usage_unwritten_rows",
                                 "Usage rows not yet written"),
        "usage_unwritten_usd": ("catalyst_llm_usage_unwritten_usd", "Spend not yet written"),
    },
    "alert": {
        "queued": ("catalyst_alert_chart_queue_items", "Alerts waiting for their chart"),
        "pending": ("catalyst_alert_pending_items", "Alerts on their way to the sinks"),
    },
}

# Per sink, from the alert actor's "<sink>.<stat>" stats.
SINK_COUNTERS = {
    "posted": ("catalyst_sink_posted", "Messages a sink posted"),
    "requests": ("catalyst_sink_requests", "HTTP requests a sink made"),
    "failures": ("catalyst_sink_failures", "Sink requests that failed"),
    "rejected": ("catalyst_sink_rejected", "Messages the sink's service rejected"),
    "waits": ("catalyst_sink_rate_limit_waits", "Times a sink waited out a rate limit"),
    "charts": ("catalyst_sink_charts", "Charts a sink attached"),
    "chart_dropped": ("catalyst_sink_charts_dropped", "Charts a sink left out"),
    "chart_missing": ("catalyst_sink_charts_missing", "Chart files that were missing"),
    "chart_too_large": ("catalyst_sink_charts_too_large", "Charts too large to attach"),
}
SINK_GAUGES = {
    "backlog": ("catalyst_sink_backlog_items", "Alerts waiting for a sink"),
    "disabled": ("catalyst_sink_disabled", "1 while a sink is disabled"),
    "remaining": ("catalyst_discord_rate_limit_remaining_requests",
                  "Requests left in the Discord route's rate-limit bucket"),
    "limit": ("catalyst_discord_rate_limit_requests", "Size of the Discord route's bucket"),
    "reset_in_s": ("catalyst_discord_rate_limit_reset_seconds",
                   "Seconds until the Discord route's bucket refills"),
    "global_wait_s": ("catalyst_discord_global_wait_seconds",
                      "Seconds left of a Discord global rate limit"),
}

HISTOGRAMS = {
    "fetch_to_alert_seconds": ("catalyst_fetch_to_alert_seconds",
                               "Seconds from an item's fetch to its alert"),
    "publication_to_alert_seconds": ("catalyst_publication_to_alert_seconds",
                                     "Seconds from an item's publication (per its feed) to "
                                     "its alert"),
}


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def build_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


class Families:
    """Metric families made on first use, so one name is one family whatever the actor."""

    def __init__(self):
        self.families: dict[str, Metric] = {}

    def get(self, cls, name: str, doc: str, labels: list[str]) -> Metric:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = cls(name, doc, labels=labels)
        return family

    def add(self, cls, name: str, doc: str, labels: dict[str, str], value: float) -> None:
        self.get(cls, name, doc, list(labels)).add_metric(list(labels.values()), value)


class SupervisorCollector:
    def __init__(self, sup):
        self.sup = sup
        self.version = build_version()

    def collect(self) -> Iterator[Metric]:
        handles = list(self.sup.handles.values())
        out = Families()
        info = out.get(GaugeMetricFamily, "catalyst_build_info",
                       "Always 1; the running version is its label", ["version"])
        info.add_metric([self.version], 1.0)
        for name, doc in (
                ("catalyst_actor_rss_bytes",
                 "Resident memory of an actor, file-backed pages included"),
                ("catalyst_actor_anon_bytes", "Anonymous resident memory of an actor: what "
                 "its memory limit and the leak trend judge"),
                ("catalyst_actor_expected_memory_bytes", "Memory an actor holds by design "
                 "(an index of live data), left out of its leak trend"),
                ("catalyst_actor_memory_trend_bytes_per_second", "Leak trend of an actor's "
                 "anonymous memory, net of what it holds by design"),
                ("catalyst_actor_up", "1 when the actor is heartbeating")):
            out.get(GaugeMetricFamily, name, doc, ["actor"])
        restarts = out.get(CounterMetricFamily, "catalyst_actor_restarts",
                           "Actor restarts by reason", ["actor", "reason"])
        feeds_seen: set[str] = set()
        histograms: dict[str, dict] = {}
        for h in handles:
            actor = {"actor": h.name}
            reading, rate = h.reading, h.trend_mb_per_min  # read once: this is another thread
            if h.alive and reading is not None:
                out.add(GaugeMetricFamily, "catalyst_actor_rss_bytes", "", actor,
                        reading.rss_mb * MB)
                out.add(GaugeMetricFamily, "catalyst_actor_anon_bytes", "", actor,
                        reading.anon_mb * MB)
                out.add(GaugeMetricFamily, "catalyst_actor_expected_memory_bytes", "", actor,
                        h.expected_mb * MB)
                if rate is not None:
                    out.add(GaugeMetricFamily, "catalyst_actor_memory_trend_bytes_per_second",
                            "", actor, rate * MB / 60.0)
            out.add(GaugeMetricFamily, "catalyst_actor_up", "", actor,
                    1.0 if h.alive and h.state == ActorState.RUNNING else 0.0)
            for reason in REASONS:
                restarts.add_metric([h.name, reason], h.restarts_by_reason.get(reason, 0))
            stats = h.stats  # replaced whole on each heartbeat: this one stays consistent
            self._actor_stats(out, h.kind.name, actor, stats)
            if h.kind.name == "fetcher":
                self._feed_stats(out, actor, stats.get("feeds"), feeds_seen)
            if h.kind.name == "alert":
                self._sink_stats(out, actor, stats)
                for key in HISTOGRAMS:
                    _merge_histogram(histograms, key, stats.get(key))
        for key, (name, doc) in HISTOGRAMS.items():
            family = HistogramMetricFamily(name, doc, labels=[])
            merged = histograms.get(key)
            if merged:
                buckets = [(_le(b), float(c)) for b, c in zip(merged["le"],
                                                              merged["cumulative"])]
                buckets.append(("+Inf", float(merged["count"])))
                family.add_metric([], buckets, merged["sum"])
            yield family
        yield from out.families.values()

    @staticmethod
    def _actor_stats(out: Families, kind: str, actor: dict, stats: dict) -> None:
        if not stats:  # no heartbeat yet: nothing known, not zero
            return
        # Counts an actor keeps appear in its stats once they happen; until then they are
        # 0, exported as such so that rate() and increase() see the first one.
        for table in (COMMON_COUNTERS, COUNTERS.get(kind, {})):
            for key, (name, doc) in table.items():
                value = _number(stats.get(key, 0))
                if value is not None:
                    out.add(CounterMetricFamily, name, doc, actor, value)
        for key, (name, doc) in GAUGES.get(kind, {}).items():
            value = _number(stats.get(key))
            if value is not None:
                out.add(GaugeMetricFamily, name, doc, actor, value)
        if kind == "dedupe":
            for key, value in stats.items():
                if key.startswith("claims_refused_") and _number(value) is not None:
                    out.add(CounterMetricFamily, "catalyst_dedupe_claims_refused",
                            "Claims refused, by reason",
                            {**actor, "reason": key.removeprefix("claims_refused_")}, value)
        if kind == "llm":
            by_reason = stats.get("fallbacks_by_reason")
            if isinstance(by_reason, dict):
                for reason, value in by_reason.items():
                    if _number(value) is not None:
                        out.add(CounterMetricFamily, "catalyst_llm_fallbacks_by_reason",
                                "Items classified by the fallback, by reason",
                                {**actor, "reason": str(reason)}, value)
            for key, value in stats.items():
                if key.startswith("api_") and _number(value) is not None:
                    out.add(CounterMetricFamily, "catalyst_llm_api_errors",
                            "Model calls that failed, by reason",
                            {**actor, "reason": key.removeprefix("api_")}, value)
            state = stats.get("breaker_state")
            if state in BREAKER_STATES:
                for s in BREAKER_STATES:
                    out.add(GaugeMetricFamily, "catalyst_llm_breaker_state",
                            "1 for the model breaker's current state",
                            {**actor, "state": s}, 1.0 if s == state else 0.0)

    @staticmethod
    def _feed_stats(out: Families, actor: dict, feeds: Any, seen: set[str]) -> None:
        """Per-feed series from the fetcher's stats["feeds"]["feeds"][name]. A feed is
        fetched by one instance; should two report it, the first wins (no duplicates)."""
        per_feed = feeds.get("feeds") if isinstance(feeds, dict) else None
        if isinstance(feeds, dict):
            edgar = feeds.get("edgar")
            if isinstance(edgar, dict):
                for key, name, doc, cls in (
                        ("requests", "catalyst_edgar_requests", "Requests made to EDGAR",
                         CounterMetricFamily),
                        ("rate_limited", "catalyst_edgar_rate_limited",
                         "Times EDGAR said slow down", CounterMetricFamily),
                        ("backoff_remaining_s", "catalyst_edgar_backoff_remaining_seconds",
                         "Seconds left of the EDGAR backoff", GaugeMetricFamily)):
                    value = _number(edgar.get(key))
                    if value is not None:
                        out.add(cls, name, doc, actor, value)
        if not isinstance(per_feed, dict):
            return
        for feed, s in per_feed.items():
            if not isinstance(s, dict) or feed in seen:
                continue
            seen.add(feed)
            label = {"feed": str(feed)}
            for key, name, doc in (
                    ("last_success_at", "catalyst_feed_last_success_timestamp_seconds",
                     "When the feed was last fetched without error (Unix time)"),
                    ("last_error_at", "catalyst_feed_last_error_timestamp_seconds",
                     "When the feed last failed (Unix time)"),
                    ("last_new_at", "catalyst_feed_last_new_item_timestamp_seconds",
                     "When the feed last brought a new item (Unix time)"),
                    ("next_poll_in_s", "catalyst_feed_next_poll_seconds",
                     "Seconds until the feed's next poll (0 while it is being polled)"),
                    ("last_elapsed_s", "catalyst_feed_last_fetch_duration_seconds",
                     "Duration of the feed's last fetch"),
                    ("last_bytes", "catalyst_feed_last_response_bytes",
                     "Size of the feed's last response")):
                value = _number(s.get(key))
                if value is None and key == "next_poll_in_s" and s.get("polling"):
                    value = 0.0  # under way: no gap in the series while a poll runs
                if value is not None:
                    out.add(GaugeMetricFamily, name, doc, label, value)
            if isinstance(s.get("stale"), bool):
                out.add(GaugeMetricFamily, "catalyst_feed_stale",
                        "1 while the feed has brought nothing new for too long", label,
                        1.0 if s["stale"] else 0.0)
            if isinstance(s.get("paused"), bool):
                out.add(GaugeMetricFamily, "catalyst_feed_paused",
                        "1 while an operator has the feed paused (not polled)", label,
                        1.0 if s["paused"] else 0.0)
            for key, name, doc in (
                    ("items_total", "catalyst_feed_items", "Items the feed gave"),
                    ("stale_total", "catalyst_feed_stale_items", "Items too old to alert"),
                    ("refused_total", "catalyst_feed_refused_responses",
                     "Entries refused (a link past any sane size)")):
                value = _number(s.get(key))
                if value is not None:
                    out.add(CounterMetricFamily, name, doc, label, value)
            counts = s.get("counts")
            if isinstance(counts, dict):
                for result, value in counts.items():
                    if _number(value) is not None:
                        out.add(CounterMetricFamily, "catalyst_feed_polls",
                                "Polls of the feed by result (error counts its errors)",
                                {**label, "result": str(result)}, value)
            breaker = s.get("breaker")
            if isinstance(breaker, dict):
                state = breaker.get("state")
                if state in BREAKER_STATES:
                    for st in BREAKER_STATES:
                        out.add(GaugeMetricFamily, "catalyst_feed_breaker_state",
                                "1 for the feed breaker's current state",
                                {**label, "state": st}, 1.0 if st == state else 0.0)
                for key, name, doc, cls in (
                        ("consecutive_failures", "catalyst_feed_consecutive_failures",
                         "Failures in a row", GaugeMetricFamily),
                        ("opened", "catalyst_feed_breaker_opened", "Times the breaker opened",
                         CounterMetricFamily)):
                    value = _number(breaker.get(key))
                    if value is not None:
                        out.add(cls, name, doc, label, value)

    @staticmethod
    def _sink_stats(out: Families, actor: dict, stats: dict) -> None:
        """The alert actor reports each sink's numbers as "<sink>.<stat>"."""
        for key, value in stats.items():
            if "." not in key or _number(value) is None:
                continue
            sink, stat = key.rsplit(".", 1)
            labels = {**actor, "sink": sink}
            if stat in SINK_COUNTERS:
                name, doc = SINK_COUNTERS[stat]
                out.add(CounterMetricFamily, name, doc, labels, value)
            elif stat in SINK_GAUGES:
                name, doc = SINK_GAUGES[stat]
                out.add(GaugeMetricFamily, name, doc, labels, value)


def _le(bound: float) -> str:
    return repr(float(bound))


def _merge_histogram(merged: dict, key: str, h: Any) -> None:
    """Adds an alert instance's histogram to the sum; one with other bounds is left out."""
    if not (isinstance(h, dict) and isinstance(h.get("le"), list)
            and isinstance(h.get("cumulative"), list)
            and len(h["cumulative"]) == len(h["le"]) + 1
            and all(_number(x) is not None for x in [*h["le"], *h["cumulative"]])
            and _number(h.get("sum")) is not None and _number(h.get("count")) is not None):
        return
    have = merged.get(key)
    if have is None:
        merged[key] = {"le": list(h["le"]), "cumulative": list(h["cumulative"][:-1]),
                       "sum": float(h["sum"]), "count": h["count"]}
    elif have["le"] == h["le"]:
        have["cumulative"] = [a + b for a, b in zip(have["cumulative"], h["cumulative"])]
        have["sum"] += float(h["sum"])
        have["count"] += h["count"]


def registry_of(sup) -> CollectorRegistry:
    """The supervisor's metrics, read at scrape time (its own port, and the console's)."""
    registry = CollectorRegistry()
    registry.register(SupervisorCollector(sup))
    return registry


def start_metrics(sup):
    cfg = sup.config.supervisor
    server, _thread = start_http_server(cfg.metrics_port, addr=cfg.metrics_host,
                                        registry=registry_of(sup))
    return server
