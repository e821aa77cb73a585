"""End to end with provider gemini: the real supervisor and actors, a loopback wire, and
google-genai pointed at the loopback fake of generateContent."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, base_config, wait_for
from tests.fake_gemini import FakeGemini

API_KEY = "e2e-gemini-key-77c1d0"
CATALYSTS = ["Announces FDA Approval of", "to Acquire", "Announces Pricing of Public "
             "Offering of", "Reports Record Revenue for"]
EXPECTED = ["fda_approval", "merger_acquisition", "offering_dilution", "earnings_guidance"]


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)  # Running hands os.environ to the CLI
    f = FakeGemini(expected_key=API_KEY)
    yield f
    f.close()


def items(prefix: str, n: int) -> list[dict]:
    return [{"title": f"{prefix.title()} Corp{i} {CATALYSTS[i % 4]} Widget{i} "
                      f"(NASDAQ: {prefix[:2].upper()}{i:03d})",
             "link": f"https://news.example.com/{prefix}/{i}",
             "summary": f"{prefix} Corp{i} said something material, number {i}."}
            for i in range(n)]


def gemini_config(workdir, feeds, fake, *, llm=None, **overrides) -> dict:
    cfg = base_config(workdir, feeds, **overrides)
    cfg["llm"] = {"provider": "gemini", "base_url": fake.base_url, "timeout_s": 10,
                  "requests_per_minute": 6000, "retry_backoff_initial_s": 0.05,
                  "retry_backoff_max_s": 0.5, **(llm or {})}
    return cfg


def llm_stats(running, name: str = "llm-0") -> dict:
    actor = running.actor(name)
    return actor["stats"] if actor and actor["state"] == "running" else {}


@pytest.mark.parametrize("instances", [1, 2])
def test_pipeline_alerts_carry_gemini_analyses(wire, fake, run_supervisor, workdir, instances):
    feed = items("golf", 20)
    feeds = [{"name": "golf", "kind": "pr", "url": wire.serve_feed("/golf.xml", lambda: feed)}]
    cfg = gemini_config(workdir, feeds, fake, actors={"llm": {"instances": instances}})
    running = run_supervisor(cfg, "--cycles", "3")
    assert running.wait_exit(60) == 0, running.log_text()[-3000:]
    alerts = running.alerts()
    assert sorted(collections.Counter(a["key"] for a in alerts).values()) == [1] * 20
    by_title = {a["title"]: a for a in alerts}
    for i, item in enumerate(feed):
        alert = by_title[item["title"]]
        assert alert["provider"] == "gemini"
        assert alert["category"] == EXPECTED[i % 4]
        assert alert["summary"].startswith("fake-gemini:")
        assert alert["tickers"] == [f"GO{i:03d}"]
    assert max(fake.item_calls.values()) == 1  # every item asked once
    assert fake.total_calls <= 20
    assert API_KEY not in running.log_text()
    history = json.loads((workdir / "data" / "supervisor-history.json").read_text())
    llms = [history["actors"][f"llm-{i}"]["stats"] for i in range(instances)]
    assert sum(s["classified_gemini"] for s in llms) == 20  # the instances share the work
    assert sum(s["calls"] for s in llms) == fake.total_calls
    assert sum(s["cost_usd_today"] for s in llms) > 0  # what the report's LLM panel shows
    assert all(s["tokens_in"] > 0 for s in llms if s["calls"])
    assert API_KEY not in json.dumps(history)


def test_redelivered_items_cost_no_model_call_even_after_llm_restart(
        wire, fake, run_supervisor, workdir):
    shown: list[dict] = []
    feeds = [{"name": "hotel", "kind": "pr", "url": wire.serve_feed("/hotel.xml",
                                                                   lambda: list(shown))}]
    cfg = gemini_config(workdir, feeds, fake, dedupe={"lease_s": 1.0, "max_attempts": 50})
    cfg["supervisor"]["heartbeat_timeout_s"] = 8.0  # alert-0 is stopped for a few seconds
    running = run_supervisor(cfg)
    wait_for(running.all_running, 30, message="all actors running")
    alert = running.actor("alert-0")
    os.kill(alert["pid"], signal.SIGSTOP)  # nothing is acknowledged: dedupe will resend
    try:
        shown.extend(items("hotel", 6))
        wait_for(lambda: llm_stats(running).get("classified_gemini") == 6, 30,
                 message="6 items classified by the model")
        calls = fake.total_calls
        old = running.actor("llm-0")
        os.kill(old["pid"], signal.SIGKILL)  # its memory cache dies with it
        wait_for(lambda: (a := running.actor("llm-0")) and a["pid"] != old["pid"]
                 and a["state"] == "running", 30, message="llm-0 replaced")
        # dedupe's leases run out; the new llm-0 answers every resend from llm_cache.db.
        wait_for(lambda: llm_stats(running).get("cache_hits", 0) >= 6, 30,
                 message="6 redeliveries answered from the cache")
        assert fake.total_calls == calls
        assert llm_stats(running).get("calls", 0) == 0
    finally:
        os.kill(alert["pid"], signal.SIGCONT)
    wait_for(lambda: len(running.alerts()) >= 6, 30, message="6 alerts")
    assert running.cli("stop").returncode == 0
    assert running.wait_exit(60) == 0
    alerts = running.alerts()
    assert sorted(collections.Counter(a["key"] for a in alerts).values()) == [1] * 6
    assert {a["provider"] for a in alerts} == {"gemini"}
    assert fake.total_calls == calls


def test_slow_model_keeps_the_llm_actor_heartbeating(wire, fake, run_supervisor, workdir):
    fake.latency_s = 4.0  # longer than heartbeat_timeout_s (3 s) and dedupe's lease (1 s)
    feed = items("india", 5)
    feeds = [{"name": "india", "kind": "pr", "url": wire.serve_feed("/india.xml", lambda: feed)}]
    cfg = gemini_config(workdir, feeds, fake, dedupe={"lease_s": 1.0, "max_attempts": 50})
    running = run_supervisor(cfg)
    wait_for(lambda: llm_stats(running).get("in_flight", 0) >= 1, 30, message="a call in flight")
    ages = []
    for _ in range(5):  # while the call runs, the loop still turns
        ages.append(running.actor("llm-0")["heartbeat_age_s"])
        wait_for(lambda: (a := running.actor("llm-0")) and a["heartbeat_age_s"] < 0.5, 2,
                 message="a fresh heartbeat")
    assert max(ages) < 1.0, ages
    wait_for(lambda: len(running.alerts()) >= 5, 30, message="5 alerts")
    actor = running.actor("llm-0")
    assert actor["restarts"] == 0
    # Resends that came while the call ran shared it: one call per item.
    assert max(fake.item_calls.values()) == 1
    assert actor["stats"]["coalesced"] >= 1
    assert {a["provider"] for a in running.alerts()} == {"gemini"}


def test_check_config_names_a_model_missing_from_the_pricing_table(workdir):
    cfg = {"llm": {"provider": "gemini", "model": "gemini-9-ultra"}}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-m", "supervisor.cli", "check-config", "-c",
                             str(path)], cwd=ROOT, capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PYTHONPATH": str(ROOT),
                                 "GEMINI_API_KEY": API_KEY})
    assert result.returncode == 2
    assert "llm.model: 'gemini-9-ultra' has no price in llm.pricing" in result.stderr
