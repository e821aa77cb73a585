"""Metrics an operator scrapes: Prometheus naming and types, per-feed series, queue depths,
the alert latency histograms and Discord's rate-limit headroom, checked by promtool and
scraped by a real Prometheus."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import base_config, free_port, wait_for
from tests.fake_discord import FakeDiscord
from tests.test_pipeline import make_items

PROMETHEUS_START_S = 60  # a cold prometheus on 2 busy cores takes a few seconds to serve
SINK = "discord:DISCORD_WEBHOOK_URL"
ALERTS = 8



def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, its labels) -> value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


@pytest.fixture
def discord():
    with FakeDiscord(limit=5, window_s=2.0) as fake:
        yield fake


def busy_system(wire, run_supervisor, workdir, discord):
    """A supervisor with metrics on, one feed whose items all alert (JSONL and Discord);
    returns (port, the scrape once every alert is in the latency histogram, start time)."""
    started = time.time()
    items = make_items("alpha", ALERTS)
    for it in items:
        it["ts"] = started - 30  # published 30 s before it is fetched
    feeds = [{"name": "alpha", "kind": "pr", "url": wire.serve_feed("/alpha.xml",
                                                                    lambda: items)}]
    port = free_port()
    cfg = base_config(workdir, feeds, alerts={
        "sinks": [{"type": "jsonl", "path": "alerts.jsonl"},
                  {"type": "discord", "webhook_url_env": "DISCORD_WEBHOOK_URL"}]})
    cfg["supervisor"]["metrics_port"] = port
    running = run_supervisor(cfg, env={"DISCORD_WEBHOOK_URL": discord.add_webhook()})
    text = wait_for(lambda: (t := scrape_or_none(port))
                    and (value(t, "catalyst_fetch_to_alert_seconds_count") or 0) >= ALERTS
                    and t, 60, interval=0.2, message="every alert in the histogram")
    return running, port, text, started


def scrape_or_none(port: int) -> str | None:
    try:
        return scrape(port)
    except OSError:
        return None


def test_metrics_follow_prometheus_conventions_with_feeds_latency_and_headroom(
        wire, run_supervisor, workdir, discord):
    running, port, text, started = busy_system(wire, run_supervisor, workdir, discord)
    kinds = types(text)
    assert "catalyst_actor_stat" not in kinds  # no gauge mixing counters, seconds and dollars
    for name, kind in {"catalyst_dedupe_claimed_items": "counter",
                       "catalyst_alert_delivered": "counter",
                       "catalyst_fetcher_fetched_items": "counter",
                       "catalyst_dedupe_dead_letters": "counter",
                       "catalyst_ledger_pending_items": "gauge",
                       "catalyst_llm_outbox_items": "gauge",
                       "catalyst_alert_pending_items": "gauge",
                       "catalyst_sink_backlog_items": "gauge",
                       "catalyst_feed_items": "counter",
                       "catalyst_feed_breaker_state": "gauge",
                       "catalyst_fetch_to_alert_seconds": "histogram",
                       "catalyst_publication_to_alert_seconds": "histogram",
                       "catalyst_actor_restarts": "counter",
                       "catalyst_build_info": "gauge"}.items():
        assert kinds.get(name) == kind, (name, kinds.get(name))
    assert value(text, "catalyst_dedupe_claimed_items_total", actor="dedupe-0") >= ALERTS
    assert value(text, "catalyst_alert_delivered_total", actor="alert-0") >= ALERTS
    assert value(text, "catalyst_ledger_pending_items", actor="dedupe-0") is not None

    # Per feed: when it last worked, what it gave, its breaker, its next poll.
    last_ok = value(text, "catalyst_feed_last_success_timestamp_seconds", feed="alpha")
    assert started <= last_ok <= time.time()
    assert value(text, "catalyst_feed_items_total", feed="alpha") >= ALERTS
    assert value(text, "catalyst_feed_polls_total", feed="alpha", result="ok") >= 1
    assert value(text, "catalyst_feed_breaker_state", feed="alpha", state="closed") == 1
    assert value(text, "catalyst_feed_breaker_state", feed="alpha", state="open") == 0
    assert value(text, "catalyst_feed_next_poll_seconds", feed="alpha") is not None

    # Latency: every delivered alert once, in fixed buckets; published 30 s before fetch.
    fetch_count = value(text, "catalyst_fetch_to_alert_seconds_count")
    assert fetch_count == value(text, "catalyst_fetch_to_alert_seconds_bucket", le="+Inf")
    assert 0 < value(text, "catalyst_fetch_to_alert_seconds_sum") < 60 * fetch_count
    pub_count = value(text, "catalyst_publication_to_alert_seconds_count")
    assert pub_count >= ALERTS
    assert value(text, "catalyst_publication_to_alert_seconds_bucket", le="10.0") == 0
    assert value(text, "catalyst_publication_to_alert_seconds_bucket", le="60.0") == pub_count
    assert value(text, "catalyst_publication_to_alert_seconds_sum") >= 30 * pub_count

    # Discord's headroom, as the sink last heard it, and the build.
    assert value(text, "catalyst_discord_rate_limit_remaining_requests",
                 actor="alert-0", sink=SINK) is not None
    assert value(text, "catalyst_discord_rate_limit_requests", actor="alert-0", sink=SINK) == 5
    assert value(text, "catalyst_sink_posted_total", actor="alert-0", sink=SINK) >= 1
    info = [labels for (name, labels), v in samples(text).items()
            if name == "catalyst_build_info" and v == 1]
    assert info and dict(info[0])["version"]
    running.cli("stop")
    assert running.wait_exit(60) == 0


def test_a_real_scrape_passes_promtool_check_metrics(wire, run_supervisor, workdir, discord):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install -y --no-install-recommends "
                    "prometheus)")
    running, port, text, _ = busy_system(wire, run_supervisor, workdir, discord)
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (
        check.stdout + check.stderr)
    running.cli("stop")
    assert running.wait_exit(60) == 0


def prometheus_query(port: int, query: str) -> list[dict] | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            answer = json.loads(r.read())
    except OSError:
        return None  # not listening yet
    return answer["data"]["result"] if answer.get("status") == "success" else None


def test_a_real_prometheus_scrapes_every_actor_up(run_supervisor, workdir: Path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install -y --no-install-recommends "
                    "prometheus)")
    port = free_port()
    cfg = base_config(workdir, [], actors={"fetcher": {"instances": 0}})
    cfg["supervisor"]["metrics_port"] = port
    running = run_supervisor(cfg)
    (workdir / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: catalyst\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n")
    web = free_port()
    log = open(workdir / "prometheus.log", "wb")
    prom = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        expected = {"dedupe-0", "llm-0", "alert-0"}

        def all_up():
            result = prometheus_query(web, "catalyst_actor_up == 1")
            up = {r["metric"]["actor"] for r in result or []}
            return up >= expected and result

        result = wait_for(all_up, PROMETHEUS_START_S, interval=0.5,
                          message="prometheus sees every actor up")
        assert all(r["metric"]["job"] == "catalyst" for r in result)
        built = wait_for(lambda: prometheus_query(web, "catalyst_build_info"), 10, interval=0.5,
                         message="build info in prometheus")
        assert built[0]["value"][1] == "1"
    finally:
        prom.terminate()
        try:
            prom.wait(30)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(10)
        log.close()
    running.cli("stop")
    assert running.wait_exit(60) == 0
