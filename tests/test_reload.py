"""Reloading the configuration of a running service (SIGHUP, `catalyst-supervisor reload`):
a feed and a sink added while items flow, nothing lost or repeated; what cannot change
while running, or an invalid file, is refused and the running configuration kept."""

from __future__ import annotations

import collections
import os
import signal
import time

import pytest
import yaml

from tests.conftest import base_config, read_jsonl, wait_for
from tests.hostile_server import HostileServer, Response, rss
from tests.test_pipeline import GrowingFeed, make_items

ETAG = '"v1"'


@pytest.fixture
def hostile():
    srv = HostileServer().start()
    yield srv
    srv.stop()


def conditional(items):
    """A feed that answers 304 to its own ETag, as real wires do."""
    def answer(seen):
        if seen.headers.get("if-none-match") == ETAG:
            return Response(304, b"", {"ETag": ETAG})
        return Response(200, rss(items).encode(), {"Content-Type": "application/rss+xml",
                                                   "ETag": ETAG})
    return answer


def counts(records: list[dict]) -> collections.Counter:
    return collections.Counter(r["key"] for r in records)


def test_a_feed_and_a_sink_added_while_items_flow_lose_and_repeat_nothing(
        wire, hostile, run_supervisor, workdir):
    now = time.time()
    steady = [{"title": f"Steady Corp{i} Announces FDA Approval of Widget{i} (NASDAQ: ST{i:03d})",
               "link": f"https://steady.example/{i}", "published": now} for i in range(5)]
    hostile.route("/steady.xml", conditional(steady))
    growing = GrowingFeed(make_items("grow", 40), 5, 3)
    feeds = [{"name": "steady", "kind": "pr", "url": hostile.url("/steady.xml")},
             {"name": "grow", "kind": "pr", "url": wire.serve_feed("/grow.xml", growing)}]
    running = run_supervisor(base_config(workdir, feeds))
    wait_for(lambda: len(running.alerts()) >= 10, 30, message="first alerts")
    before = {a["name"]: a["pid"] for a in running.status()["actors"]}
    # Add a feed and a second sink, while the growing feed keeps bringing items.
    cfg = yaml.safe_load(running.config_path.read_text())
    added = make_items("late", 6)
    cfg["feeds"].append({"name": "late", "kind": "pr",
                         "url": wire.serve_feed("/late.xml", lambda: added)})
    cfg["alerts"]["sinks"].append({"type": "jsonl", "path": "second.jsonl"})
    running.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    reloaded_at = time.monotonic()
    os.kill(running.proc.pid, signal.SIGHUP)
    wait_for(lambda: {a["link"] for a in read_jsonl(workdir / "second.jsonl")} >=
             {i["link"] for i in added}, 60, message="the new feed in the new sink")
    wait_for(lambda: len(running.alerts()) >= 5 + 40 + 6, 60, message="everything alerted")
    status = running.status()
    after = {a["name"]: a for a in status["actors"]}
    # The fetcher took the feed in place (same process: ETags, breakers kept); the kinds
    # whose settings changed came back with the new configuration, for reason "reload".
    assert after["fetcher-0"]["pid"] == before["fetcher-0"]
    assert after["alert-0"]["pid"] != before["alert-0"]
    assert after["alert-0"]["last_restart_reason"] == "reload"
    assert all(a["state"] == "running" for a in after.values())
    steady_after = [s for s in hostile.requests("/steady.xml") if s.at > reloaded_at]
    assert steady_after and all(s.headers.get("if-none-match") == ETAG for s in steady_after)
    assert running.cli("stop").returncode == 0
    assert running.wait_exit(60) == 0
    first = counts(running.alerts())
    assert len(first) == 51 and max(first.values()) == 1
    second = counts(read_jsonl(workdir / "second.jsonl"))
    assert max(second.values()) == 1 and {i["link"] for i in added} <= \
        {a["link"] for a in read_jsonl(workdir / "second.jsonl")}
    assert any(e["event"] == "config_reloaded" for e in running.admin_events())


def test_an_invalid_file_or_a_change_needing_a_restart_is_refused_and_the_old_kept(
        wire, run_supervisor, workdir):
    feeds = [{"name": "grow", "kind": "pr",
              "url": wire.serve_feed("/grow.xml", GrowingFeed(make_items("keep", 20), 5, 5))}]
    running = run_supervisor(base_config(workdir, feeds))
    wait_for(lambda: len(running.alerts()) >= 5, 30, message="first alerts")
    pids = {a["name"]: a["pid"] for a in running.status()["actors"]}
    good = running.config_path.read_text()
    running.config_path.write_text(good + "\nthis is: [not yaml\n")
    os.kill(running.proc.pid, signal.SIGHUP)  # as systemctl reload does
    wait_for(lambda: "reload refused" in running.log_text(), 10, message="refused in the log")
    assert "not valid YAML" in running.log_text()
    cfg = yaml.safe_load(good)
    cfg["data_dir"] = "elsewhere"
    cfg.setdefault("actors", {})["llm"] = {"instances": 2}
    running.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    restart = running.cli("reload")
    assert restart.returncode == 1 and "needs a restart" in restart.stderr
    assert "data_dir" in restart.stderr and "actors.llm.instances" in restart.stderr
    events = wait_for(lambda: [e for e in running.admin_events()
                               if e["event"] == "reload_refused"], 10, message="admin events")
    assert {e["reason"] for e in events} == {"invalid", "needs_restart"}
    # Nothing was touched: same processes, still alerting under the old configuration.
    wait_for(lambda: len(running.alerts()) >= 20, 30, message="items still flowing")
    assert {a["name"]: a["pid"] for a in running.status()["actors"]} == pids
    running.config_path.write_text(good)
    same = running.cli("reload", "--json")
    assert same.returncode == 0 and '"restarted": []' in same.stdout
