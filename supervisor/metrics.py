"""Prometheus exposition of the supervisor's view, read at scrape time.

Memory, per actor: catalyst_actor_anon_bytes is its anonymous resident memory, what the
memory limit (max_rss_mb) and the leak trend judge; catalyst_actor_rss_bytes is its whole
resident set, file-backed pages (mapped files, shared libraries) included;
catalyst_actor_expected_memory_bytes is what it holds by design (an index of live data), and
catalyst_actor_memory_trend_bytes_per_second the leak trend, net of that.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from supervisor.handle import REASONS, ActorState
from supervisor.watch import MB


class SupervisorCollector:
    def __init__(self, sup):
        self.sup = sup

    def collect(self):
        handles = list(self.sup.handles.values())
        rss = GaugeMetricFamily("catalyst_actor_rss_bytes",
                                "Resident memory of an actor, file-backed pages included",
                                labels=["actor"])
        anon = GaugeMetricFamily("catalyst_actor_anon_bytes",
                                 "Anonymous resident memory of an actor: what its memory "
                                 "limit and the leak trend judge", labels=["actor"])
        expected = GaugeMetricFamily("catalyst_actor_expected_memory_bytes",
                                     "Memory an actor holds by design (an index of live data), "
                                     "left out of its leak trend", labels=["actor"])
        trend = GaugeMetricFamily("catalyst_actor_memory_trend_bytes_per_second",
                                  "Leak trend of an actor's anonymous memory, net of what it "
                                  "holds by design", labels=["actor"])
        up = GaugeMetricFamily("catalyst_actor_up", "1 when the actor is heartbeating",
                               labels=["actor"])
        restarts = CounterMetricFamily("catalyst_actor_restarts", "Actor restarts by reason",
                                       labels=["actor", "reason"])
        stats = GaugeMetricFamily("catalyst_actor_stat", "Numeric stats an actor reports",
                                  labels=["actor", "stat"])
        for h in handles:
            reading, rate = h.reading, h.trend_mb_per_min  # read once: this is another thread
            if h.alive and reading is not None:
                rss.add_metric([h.name], reading.rss_mb * MB)
                anon.add_metric([h.name], reading.anon_mb * MB)
                expected.add_metric([h.name], h.expected_mb * MB)
                if rate is not None:
                    trend.add_metric([h.name], rate * MB / 60.0)
            up.add_metric([h.name], 1.0 if h.alive and h.state == ActorState.RUNNING else 0.0)
            for reason in REASONS:
                restarts.add_metric([h.name, reason], h.restarts_by_reason.get(reason, 0))
            for key, value in list(h.stats.items()):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    stats.add_metric([h.name, key], float(value))
        yield from (rss, anon, expected, trend, up, restarts, stats)


def start_metrics(sup):
    registry = CollectorRegistry()
    registry.register(SupervisorCollector(sup))
    cfg = sup.config.supervisor
    server, _thread = start_http_server(cfg.metrics_port, addr=cfg.metrics_host,
                                        registry=registry)
    return server
