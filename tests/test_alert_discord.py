"""End to end through the real supervisor: alerts to a loopback Discord that enforces
5 posts per 2 s with real headers and 429s. Nothing dropped, nothing twice, order kept per
ticker, and the webhook token nowhere in what the system writes."""

from __future__ import annotations

import collections
import json
import re
import sqlite3
import time
from pathlib import Path

import pytest

from supervisor.demo_server import DemoPrices
from tests.conftest import base_config, wait_for
from tests.fake_discord import FakeDiscord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TICKERS = ["ACMB", "NRHV", "TDWL", "QSM", "BCSI", "HLXR", "VNTH", "ARDR", "PWDX", "LMFS"]
CATALYSTS = ["Receives FDA Approval for", "Reports Positive Phase 3 Results for",
             "Signs Supply Contract for", "to Acquire", "Announces Record Revenue from"]
SEQ = re.compile(r"Update (\d+) ")


def burst_items(n: int) -> list[dict]:
    now = time.time()
    return [{"title": f"{TICKERS[i % len(TICKERS)]} Corp Update {i:03d} "
                      f"{CATALYSTS[i % len(CATALYSTS)]} Widget (NASDAQ: {TICKERS[i % len(TICKERS)]})",
             "link": f"https://news.example.com/burst/{i}",
             "summary": f"Update {i} said today something material.",
             "ts": now - 60 + i * 0.1}
            for i in range(n)]


@pytest.fixture
def discord():
    with FakeDiscord(limit=5, window_s=2.0) as fake:
        yield fake


def serve_prices(wire) -> str:
    prices = DemoPrices()
    for ticker in TICKERS:
        wire.routes[f"/prices/{ticker}.json"] = (
            lambda t=ticker: (200, {"Content-Type": "application/json"},
                              json.dumps(prices.payload(t, time.time())).encode()))
    return wire.base_url + "/prices/{ticker}.json"


def discord_config(workdir: Path, feeds: list[dict], **alerts) -> dict:
    cfg = base_config(workdir, feeds, alerts={
        "sinks": [{"type": "jsonl", "path": "alerts.jsonl"},
                  {"type": "discord", "webhook_url_env": "DISCORD_WEBHOOK_URL"}], **alerts})
    cfg["supervisor"]["drain_timeout_s"] = 120.0
    return cfg


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def per_ticker(titles: list[str]) -> dict[str, list[int]]:
    order: dict[str, list[int]] = collections.defaultdict(list)
    for title in titles:
        order[title.split()[0]].append(int(SEQ.search(title).group(1)))
    return order


def test_a_burst_of_100_alerts_reaches_discord_whole_once_each_in_order(
        wire, run_supervisor, workdir, discord):
    url = discord.add_webhook()
    token = url.rsplit("/", 1)[1]
    items = burst_items(100)
    feeds = [{"name": "burst", "kind": "pr", "url": wire.serve_feed("/burst.xml", lambda: items)}]
    cfg = discord_config(workdir, feeds, charts={"enabled": True, "dir": "charts",
                                                 "price_url": serve_prices(wire),
                                                 "max_wait_s": 30.0})  # 100 renders in a row
    running = run_supervisor(cfg, "--cycles", "2", env={"DISCORD_WEBHOOK_URL": url})
    discord.wait_for(10, 60)
    status = running.cli("status", "--json")  # mid-burst: the sink is named, never its URL
    assert status.returncode == 0 and "discord:DISCORD_WEBHOOK_URL.posted" in status.stdout
    assert token not in status.stdout
    got = discord.wait_for(100, 120)
    assert running.wait_exit(60) == 0, running.log_text()[-3000:]

    titles = [m.embed["title"] for m in discord.received()]
    assert len(titles) == 100 and len(set(titles)) == 100
    assert sorted(titles) == sorted(i["title"] for i in items)
    assert discord.count(429) <= 1
    assert all(m.waited for m in got)
    # In order per ticker: the order the alert actor took them (the JSONL sink writes them as
    # they come) is the order Discord shows them.
    taken = [a["title"] for a in running.alerts()]
    assert len(taken) == 100
    assert per_ticker(titles) == per_ticker(taken)
    # Charts rode along as attachments, shown in the embed.
    for m in got:
        assert m.embed["image"]["url"] == "attachment://chart.png"
        filename, data = m.files["files[0]"]
        assert filename == "chart.png" and data.startswith(PNG_SIGNATURE)
    # Every key acknowledged: nothing pending in the ledger.
    db = sqlite3.connect(workdir / "data" / "seen.db")
    assert db.execute("SELECT count(*) FROM ledger WHERE state = 1").fetchone()[0] == 0
    db.close()
    # The token is a secret: not in the log, not in any file the system wrote.
    assert token not in running.log_text()
    assert files_containing(workdir, token.encode()) == []
    assert not any(e["event"] == "sink_disabled" for e in running.admin_events())


def test_a_deleted_webhook_disables_discord_holds_its_alerts_and_a_restart_sends_them(
        wire, run_supervisor, workdir, discord):
    url = discord.add_webhook()
    webhook_id, token = url.split("/")[-2:]
    discord.delete_webhook(webhook_id)
    items = burst_items(8)
    feeds = [{"name": "burst", "kind": "pr", "url": wire.serve_feed("/burst.xml", lambda: items)}]
    running = run_supervisor(discord_config(workdir, feeds), env={"DISCORD_WEBHOOK_URL": url})

    # The other sink gets everything; Discord was asked once, then left alone.
    wait_for(lambda: len(running.alerts()) == 8, 30, message="8 JSONL alerts")
    event = wait_for(lambda: next((e for e in running.admin_events()
                                   if e["event"] == "sink_disabled"), None),
                     20, message="a sink_disabled admin event")
    assert event["actor"] == "alert-0" and "DISCORD_WEBHOOK_URL" in event["message"]
    assert discord.count(404) == 1
    # Not acked: the items stay pending in the ledger (sent again each lease, never silent).
    wait_for(lambda: (running.actor("dedupe-0") or {}).get("stats", {}).get("pending") == 8,
             20, message="8 items pending in the ledger")
    redelivered = wait_for(lambda: (running.actor("alert-0") or {}).get("stats", {})
                           .get("held_unacked", 0) >= 16, 30, message="redelivered and held")
    assert redelivered and discord.count(404) == 1  # redeliveries cause no retry storm

    # The operator fixes the webhook and restarts the alert actor: the held alerts go out.
    with discord.lock:
        discord.hooks[webhook_id].deleted = False
    assert running.cli("restart", "alert-0").returncode == 0
    got = discord.wait_for(8, 60)
    assert sorted(m.embed["title"] for m in got) == sorted(i["title"] for i in items)
    wait_for(lambda: (running.actor("dedupe-0") or {}).get("stats", {}).get("pending") == 0,
             30, message="ledger drained")
    assert running.cli("stop").returncode == 0
    assert running.wait_exit(60) == 0
    assert len(discord.received()) == 8  # once each
    assert len(running.alerts()) == 8  # the JSONL sink was not written twice
    assert token not in running.log_text()
    assert files_containing(workdir, token.encode()) == []


def test_a_slow_chart_never_holds_a_text_alert_past_max_wait(wire, run_supervisor, workdir,
                                                             discord):
    url = discord.add_webhook()
    prices = DemoPrices()

    def slow_prices(ticker: str):
        def answer():
            time.sleep(2.0)  # far longer than alerts.charts.max_wait_s
            return 200, {}, json.dumps(prices.payload(ticker, time.time())).encode()
        return answer

    for ticker in TICKERS:
        wire.routes[f"/prices/{ticker}.json"] = slow_prices(ticker)
    items = burst_items(4)
    feeds = [{"name": "burst", "kind": "pr", "url": wire.serve_feed("/burst.xml", lambda: items)}]
    max_wait = 0.2
    cfg = discord_config(workdir, feeds, charts={
        "enabled": True, "dir": "charts", "price_url": wire.base_url + "/prices/{ticker}.json",
        "max_wait_s": max_wait})
    running = run_supervisor(cfg, env={"DISCORD_WEBHOOK_URL": url})
    got = discord.wait_for(4, 30)
    assert all("image" not in m.embed and not m.files for m in got)  # text went without it
    alerts = running.alerts()
    assert len(alerts) == 4
    for a in alerts:  # fetched -> alerted: the chart wait plus the pipeline, not the 2 s
        assert a["chart"] is None
        assert a["alerted_at"] - a["fetched_at"] < max_wait + 1.0, a
    wait_for(lambda: (running.actor("alert-0") or {}).get("stats", {})
             .get("chart_timeouts", 0) >= 1, 10, message="chart timeouts counted")
    assert running.cli("stop").returncode == 0
    assert running.wait_exit(60) == 0


def test_webhook_env_missing_at_start_holds_discord_alerts_with_an_admin_event(
        wire, run_supervisor, workdir):
    items = burst_items(3)
    feeds = [{"name": "burst", "kind": "pr", "url": wire.serve_feed("/burst.xml", lambda: items)}]
    cfg = discord_config(workdir, feeds)
    cfg["supervisor"]["drain_timeout_s"] = 1.0  # the ledger keeps them: a stop cannot drain
    running = run_supervisor(cfg, env={"DISCORD_WEBHOOK_URL": ""})
    wait_for(lambda: len(running.alerts()) == 3, 30, message="JSONL alerts")
    event = wait_for(lambda: next((e for e in running.admin_events()
                                   if e["event"] == "sink_disabled"), None), 20,
                     message="sink_disabled")
    assert "DISCORD_WEBHOOK_URL" in event["message"] and event["level"] == "error"
    wait_for(lambda: (running.actor("dedupe-0") or {}).get("stats", {}).get("pending") == 3,
             20, message="3 items held pending in the ledger")
    assert running.cli("stop").returncode == 0
    running.wait_exit(30)
    assert "drain timed out" in running.log_text()  # said out loud, items kept


def test_alert_actor_killed_mid_backlog_loses_no_discord_alert(wire, run_supervisor, workdir,
                                                               discord):
    import os
    import signal

    url = discord.add_webhook()
    items = burst_items(30)
    feeds = [{"name": "burst", "kind": "pr", "url": wire.serve_feed("/burst.xml", lambda: items)}]
    running = run_supervisor(discord_config(workdir, feeds), env={"DISCORD_WEBHOOK_URL": url})
    discord.wait_for(8, 30)  # the rest wait in the Discord lane's backlog
    victim = running.actor("alert-0")
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: (a := running.actor("alert-0")) and a["pid"] != victim["pid"]
             and a["state"] == "running", 30, message="alert-0 replaced")
    discord.wait_for(30, 60)
    wait_for(lambda: (running.actor("dedupe-0") or {}).get("stats", {}).get("pending") == 0,
             60, message="ledger drained")
    titles = collections.Counter(m.embed["title"] for m in discord.received())
    assert set(titles) == {i["title"] for i in items}  # every one arrived
    # A post under way at the kill may go twice (webhooks take no idempotency key); no more.
    assert sum(n - 1 for n in titles.values()) <= 1
    assert running.cli("stop").returncode == 0
    assert running.wait_exit(60) == 0


def test_two_desks_share_one_service_each_getting_only_its_alerts(wire, run_supervisor, workdir):
    """An 8-K desk and a biotech desk on two Discord webhooks: each sink's filter (kinds,
    forms, categories, a watchlist, its own min_score) decides what it gets; the JSONL sink
    without a filter takes everything above the global min_score."""
    from tests.hostile_server import sec_atom

    now = time.time()
    releases = [
        {"title": "Acme Bio Receives FDA Approval for Zelvantra (NASDAQ: ACMB)",
         "link": "https://news.example.com/r/1", "ts": now},
        {"title": "Nerva Health Reports Positive Phase 3 Results for Widget (NASDAQ: NRHV)",
         "link": "https://news.example.com/r/2", "ts": now},
        {"title": "Tidewell Signs Supply Contract for Widgets (NASDAQ: TDWL)",
         "link": "https://news.example.com/r/3", "ts": now}]
    filings = [{"form": form, "company": f"Filer {i}", "cik": 1000 + i, "role": "Filer",
                "accession": f"00000010{i:02d}-26-0000{i:02d}", "updated": now}
               for i, form in enumerate(["8-K", "8-K/A", "424B5"])]
    wire.routes["/sec.atom"] = lambda: (200, {"Content-Type": "application/atom+xml"},
                                        sec_atom(filings).encode())
    wire.routes["/tickers.json"] = lambda: (200, {}, b"{}")
    with FakeDiscord(limit=50, window_s=1.0) as fake:
        filings_url, biotech_url = fake.add_webhook("111"), fake.add_webhook("222")
        feeds = [{"name": "wire", "kind": "pr", "url": wire.serve_feed("/wire.xml", lambda: releases)},
                 {"name": "sec", "kind": "sec", "url": wire.base_url + "/sec.atom"}]
        cfg = base_config(workdir, feeds, alerts={
            "min_score": 0.0,
            "sinks": [{"type": "jsonl", "path": "alerts.jsonl"},
                      {"type": "discord", "webhook_url_env": "FILINGS_WEBHOOK",
                       "kinds": ["sec"], "forms": ["8-K"], "min_score": 0.0},
                      {"type": "discord", "webhook_url_env": "BIOTECH_WEBHOOK",
                       "categories": ["fda_approval", "clinical_results"], "min_score": 0.3,
                       "tickers": ["ACMB", "NRHV", "ZZZZ"]}],
            "admin": {"type": "jsonl", "path": "admin.jsonl"},
            "charts": {"enabled": False}},
            fetch={"company_tickers_url": wire.base_url + "/tickers.json"})
        running = run_supervisor(cfg, "--cycles", "2", env={"FILINGS_WEBHOOK": filings_url,
                                                            "BIOTECH_WEBHOOK": biotech_url})
        assert running.wait_exit(90) == 0, running.log_text()[-3000:]
        got: dict[str, list[str]] = collections.defaultdict(list)
        for m in fake.received():
            got[m.webhook_id].append(m.payload["embeds"][0]["title"])
    assert len(running.alerts()) == 6  # the unfiltered JSONL sink: all of it
    assert sorted(got["111"]) == ["8-K - Filer 0 (0000001000) (Filer)",
                                  "8-K/A - Filer 1 (0000001001) (Filer)"]
    assert sorted(got["222"]) == sorted(r["title"] for r in releases[:2])
