"""What the console shows, built on the supervisor's loop and published whole.

The loop calls ``build`` every console.publish_interval_s; the result is a plain dict of
JSON values the HTTP thread only reads (it never touches an actor handle), so a slow or
hostile client cannot delay the loop. Everything here comes from the actors' heartbeats
(their stats), the supervisor's own handles and its admin notifier: the last alerts are
the ones the alert actors report in their heartbeats, not read from a sink's file, so the
page shows them whatever sinks are configured.

No secret reaches a snapshot: stats never carry one (sinks are named by type and file,
never by webhook URL), and the configuration is not copied in.
"""

from __future__ import annotations

import os
import time
from typing import Any

from supervisor.handle import ActorHandle, ActorState

MEMORY_POINTS = 60  # points in an actor's memory sparkline
MEMORY_SPAN = 240  # samples the sparkline spans (at memory_check_interval_s each)
RESTARTS_SHOWN = 5  # the newest restarts of an actor, with their reasons
ALERTS_SHOWN = 10
ADMIN_SHOWN = 10
MESSAGE_CHARS = 300  # of an admin event's message
SINK_FIELDS = ("backlog", "disabled", "remaining", "limit", "reset_in_s", "global_wait_s",
               "delivered", "failed")
FEED_FIELDS = ("last_status", "last_success_at", "last_error", "last_error_at", "items_total",
               "next_poll_in_s", "polling", "paused", "stale", "last_http_status",
               "leased_here")
# The queue between each pair of stages: (from, to, the stats of the kind that holds it,
# what the number counts). A view of stats, as supervisor/metrics.py's tables are.
QUEUES = (
    ("fetcher", "dedupe", "fetcher", ("unconfirmed_batches",), "claims waiting for an answer"),
    ("dedupe", "llm", "llm", ("backlog", "in_flight"), "items waiting for or in classification"),
    ("llm", "alert", "llm", ("outbox",), "classified frames not yet taken by an alert actor"),
    ("alert", "sinks", "alert", ("pending",), "alerts being charted or delivered"),
)


def _num(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _actor(h: ActorHandle, now: float) -> dict[str, Any]:
    span = list(h.timeline)[-MEMORY_SPAN:] if h.alive else []
    step = max(1, len(span) // MEMORY_POINTS)
    return {
        "name": h.name, "kind": h.kind.name, "state": str(h.state), "pid": h.pid,
        "heartbeat_age_s": h.heartbeat_age_s(now), "uptime_s": h.uptime_s(now),
        "rss_mb": h.rss_mb(), "anon_mb": h.anon_mb(), "max_rss_mb": h.max_rss_mb,
        "memory_mb": [anon for _, _, anon in span[::step]],  # what the limit judges
        "restarts": h.restarts, "restarts_by_reason": dict(h.restarts_by_reason),
        "last_restart_reason": h.last_restart_reason, "last_exit": h.last_exit,
        "recent_restarts": [{"at": at, "reason": reason}
                            for at, reason in list(h.markers)[-RESTARTS_SHOWN:]],
    }


def _feeds(handles: list[ActorHandle]) -> list[dict[str, Any]]:
    out = []
    for h in handles:
        feeds = h.stats.get("feeds")
        feeds = feeds.get("feeds") if isinstance(feeds, dict) else None
        if not isinstance(feeds, dict):
            continue
        for name, f in feeds.items():
            if not isinstance(f, dict):
                continue
            breaker = f.get("breaker") if isinstance(f.get("breaker"), dict) else {}
            row = {"name": name, "actor": h.name, "breaker": breaker.get("state")}
            row.update({k: f.get(k) for k in FEED_FIELDS})
            out.append(row)
    return sorted(out, key=lambda r: r["name"])


def _sinks(handles: list[ActorHandle]) -> list[dict[str, Any]]:
    """Each sink's numbers, from the alert actors' "<sink>.<stat>" stats (summed over
    instances for counts, the least headroom for rate limits)."""
    sinks: dict[str, dict[str, Any]] = {}
    for h in handles:
        for key, value in h.stats.items():
            if "." not in key or not isinstance(value, (int, float)):
                continue
            sink, stat = key.rsplit(".", 1)
            if stat not in SINK_FIELDS:
                continue
            row = sinks.setdefault(sink, {"name": sink})
            if stat in ("remaining",):
                row[stat] = min(row.get(stat, value), value)
            elif stat in ("limit", "reset_in_s", "global_wait_s", "disabled"):
                row[stat] = max(row.get(stat, value), value)
            else:
                row[stat] = row.get(stat, 0) + value
    return sorted(sinks.values(), key=lambda r: r["name"])


def _llm(config, handles: list[ActorHandle]) -> dict[str, Any]:
    llm = config.llm
    stats = [h.stats for h in handles if h.stats]
    spent = max((_num(s.get("cost_usd_today_all_instances")) for s in stats), default=0)
    return {
        "provider": llm.provider, "spent_usd_today": round(spent, 4),
        "budget_usd": llm.daily_budget_usd + llm.fallback_daily_budget_usd,
        "models_in_use": sorted({str(s["model_in_use"]) for s in stats if s.get("model_in_use")}),
        "breaker": sorted({str(s["breaker_state"]) for s in stats if s.get("breaker_state")}),
        "fallbacks": sum(_num(s.get("fallbacks")) for s in stats),
        "usage_store": sorted({str(s["usage_store"]) for s in stats if s.get("usage_store")}),
        "feeds_at_cap": sorted({f for s in stats for f in s.get("feeds_at_cap") or []
                                if isinstance(f, str)}),
    }


def _alerts(handles: list[ActorHandle]) -> list[dict[str, Any]]:
    alerts = [a for h in handles for a in h.stats.get("recent_alerts") or []
              if isinstance(a, dict)]
    alerts.sort(key=lambda a: _num(a.get("alerted_at")), reverse=True)
    return alerts[:ALERTS_SHOWN]


def _admin(events: list[dict]) -> list[dict[str, Any]]:
    return [{"at": e.get("at"), "event": e.get("event"), "actor": e.get("actor"),
             "reason": e.get("reason"), "level": e.get("level"),
             "message": str(e.get("message", ""))[:MESSAGE_CHARS]}
            for e in reversed(events[-ADMIN_SHOWN:])]


def ready_fetch_window_s(config) -> float:
    configured = config.console.ready_fetch_within_s
    if configured is not None:
        return configured
    longest = max((f.poll_interval(config.poll_interval_s) for f in config.enabled_feeds()),
                  default=config.poll_interval_s)
    return max(60.0, 3 * longest)


def readiness(sup, feeds: list[dict], sinks: list[dict], wall: float) -> dict[str, Any]:
    """Ready: the supervisor is not stopping, every actor runs and heartbeats, some feed
    was fetched within the window (unless it polls none: all paused or polled by another
    host), and no sink is disabled."""
    reasons = []
    if sup.shutting_down or sup.stop_requested:
        reasons.append("the supervisor is stopping")
    now, quiet_s = time.monotonic(), sup.sup.heartbeat_timeout_s / 2
    for h in sup.handles.values():
        age = h.heartbeat_age_s(now)
        if h.state != ActorState.RUNNING:
            reasons.append(f"{h.name} is {h.state}")
        elif age is not None and age > quiet_s:  # hanging: the supervisor acts at the timeout
            reasons.append(f"{h.name} sent no heartbeat for {age:.1f} s")
    # Paused feeds, and feeds another host polls (their leases are not ours), do not count.
    active = [f for f in feeds if not f.get("paused") and f.get("leased_here") is not False]
    window = ready_fetch_window_s(sup.config)
    if active:
        newest = max((_num(f.get("last_success_at")) for f in active), default=0)
        if wall - newest > window:
            reasons.append(f"no feed fetched successfully in the last {window:.0f} s"
                           if newest else "no feed has been fetched successfully yet")
    for s in sinks:
        if s.get("disabled"):
            reasons.append(f"sink {s['name']} is disabled")
    return {"ready": not reasons, "reasons": reasons, "fetch_window_s": window}


def build(sup, *, actions: bool) -> dict[str, Any]:
    now, wall = time.monotonic(), time.time()
    handles = list(sup.handles.values())
    by_kind: dict[str, list[ActorHandle]] = {}
    for h in handles:
        by_kind.setdefault(h.kind.name, []).append(h)
    ledger_holder = next((h for h in handles if h.kind.holds_ledger), None)
    ledger = ledger_holder.stats if ledger_holder else {}
    feeds = _feeds(by_kind.get("fetcher", []))
    sinks = _sinks(by_kind.get("alert", []))
    queues = []
    for src, dst, holder, keys, meaning in QUEUES:
        if holder in by_kind:
            depth = sum(_num(h.stats.get(k)) for h in by_kind[holder] for k in keys)
            queues.append({"from": src, "to": dst, "depth": depth, "meaning": meaning})
    return {
        "at": wall,
        "supervisor": {"pid": os.getpid(), "host": sup.config.host_name(),
                       "roles": [k.name for k in sup.kinds],
                       "uptime_s": round(now - sup.started, 1),
                       "state": "stopping" if sup.shutting_down else "running",
                       "dropped_messages": sum(sup.dropped.counts.values())},
        "actions": actions,
        "actors": [_actor(h, now) for h in handles],
        "ledger": {"pending": ledger.get("pending"), "live_keys": ledger.get("live_keys"),
                   "store": ledger.get("store"), "dead_lettered": ledger.get("dead", 0),
                   "redelivered": ledger.get("redelivered", 0)},
        "queues": queues,
        "feeds": feeds,
        "llm": _llm(sup.config, by_kind.get("llm", [])),
        "sinks": sinks,
        "alerts": _alerts(by_kind.get("alert", [])),
        "admin": _admin(sup.admin.recent()),
        "readiness": readiness(sup, feeds, sinks, wall),
    }
