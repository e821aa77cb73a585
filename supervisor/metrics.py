"""Prometheus exposition of the supervisor's view, read at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from supervisor.handle import REASONS, ActorState


class SupervisorCollector:
    def __init__(self, sup):
        self.sup = sup

    def collect(self):
        handles = list(self.sup.handles.values())
        rss = GaugeMetricFamily("catalyst_actor_rss_bytes", "Resident memory of an actor",
                                labels=["actor"])
        up = GaugeMetricFamily("catalyst_actor_up", "1 when the actor is heartbeating",
                               labels=["actor"])
        restarts = CounterMetricFamily("catalyst_actor_restarts", "Actor restarts by reason",
                                       labels=["actor", "reason"])
        stats = GaugeMetricFamily("catalyst_actor_stat", "Numeric stats an actor reports",
                                  labels=["actor", "stat"])
        for h in handles:
            if h.alive and h.rss_mb() is not None:
                rss.add_metric([h.name], h.rss_mb() * 1024 * 1024)
            up.add_metric([h.name], 1.0 if h.alive and h.state == ActorState.RUNNING else 0.0)
            for reason in REASONS:
                restarts.add_metric([h.name, reason], h.restarts_by_reason.get(reason, 0))
            for key, value in list(h.stats.items()):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    stats.add_metric([h.name, key], float(value))
        yield from (rss, up, restarts, stats)


def start_metrics(sup):
    registry = CollectorRegistry()
    registry.register(SupervisorCollector(sup))
    cfg = sup.config.supervisor
    server, _thread = start_http_server(cfg.metrics_port, addr=cfg.metrics_host,
                                        registry=registry)
    return server
