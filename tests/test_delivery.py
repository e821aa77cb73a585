"""Durable delivery: nothing lost and nothing alerted twice, whatever is killed."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import sqlite3
import threading
import time

import psutil
import pytest

from tests.conftest import base_config, wait_for
from tests.test_pipeline import make_items


def integrity_ok(path) -> bool:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def assert_each_alerted_once(alerts: list[dict], expected: int) -> None:
    counts = collections.Counter(a["key"] for a in alerts)
    twice = [k for k, n in counts.items() if n > 1]
    assert twice == [], f"alerted more than once: {twice[:5]}"
    assert len(counts) == expected, f"{expected - len(counts)} items missing"


def test_pending_items_are_sent_again_after_the_whole_system_is_killed(
        wire, run_supervisor, workdir):
    items = make_items("delta", 80)
    serving = {"items": items}
    feeds = [{"name": "delta", "kind": "pr",
              "url": wire.serve_feed("/delta.xml", lambda: serving["items"])}]
    # The alert actor cannot deliver yet: its jsonl sink's directory is a file.
    (workdir / "blocked").write_text("not a directory")
    cfg = base_config(workdir, feeds)
    cfg["alerts"]["sinks"] = [{"type": "jsonl", "path": "blocked/alerts.jsonl"}]
    first = run_supervisor(cfg)
    wait_for(lambda: (a := first.actor("dedupe-0")) and a["stats"].get("new", 0) >= 80, 30,
             message="80 items claimed")
    family = first.descendants()
    os.kill(first.proc.pid, signal.SIGKILL)
    for p in family:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(family, timeout=10)
    first.proc.wait(10)
    # Nothing new on the wire any more: only the ledger can bring the 80 items back.
    serving["items"] = []
    (workdir / "blocked").unlink()
    second = run_supervisor(base_config(workdir, feeds))
    wait_for(lambda: len(second.alerts()) >= 80, 60, message="80 alerts after restart")
    second.cli("stop")
    assert second.wait_exit(60) == 0
    assert_each_alerted_once(second.alerts(), 80)


def test_a_corrupt_store_at_start_is_moved_aside_and_service_goes_on(
        wire, run_supervisor, workdir):
    (workdir / "data").mkdir()
    (workdir / "data" / "seen.db").write_bytes(b"\x00garbage, not SQLite\x00" * 500)
    feeds = [{"name": "echo", "kind": "pr",
              "url": wire.serve_feed("/echo.xml", lambda: make_items("echo", 5))}]
    running = run_supervisor(base_config(workdir, feeds))
    wait_for(lambda: len(running.alerts()) >= 5, 30, message="5 alerts")
    events = wait_for(lambda: [e for e in running.admin_events()
                               if e["event"] == "store_corrupt"], 10, message="admin event")
    assert "moved to seen.db.corrupt-" in events[0]["message"]
    assert list((workdir / "data").glob("seen.db.corrupt-*"))
    running.cli("stop")
    assert running.wait_exit(60) == 0
    assert integrity_ok(workdir / "data" / "seen.db")


def test_dead_letters_raise_an_admin_event_and_an_operator_can_send_them_again(
        wire, run_supervisor, workdir):
    feeds = [{"name": "foxtrot", "kind": "pr",
              "url": wire.serve_feed("/f.xml", lambda: make_items("foxtrot", 2))}]
    cfg = base_config(workdir, feeds, dedupe={"lease_s": 0.3, "max_attempts": 2})
    (workdir / "blocked").write_text("not a directory")  # every delivery fails
    cfg["alerts"]["sinks"] = [{"type": "jsonl", "path": "blocked/alerts.jsonl"}]
    running = run_supervisor(cfg)
    dead = wait_for(lambda: [e for e in running.admin_events() if e["event"] == "dead_letter"],
                    30, message="dead letters")
    assert dead[0]["level"] == "error" and "gave up after 2 attempts" in dead[0]["message"]

    def listed() -> dict:
        out = running.cli("dead-letters", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    letters = wait_for(lambda: (d := listed())["total"] == 2 and d, 30, message="2 listed")
    assert sorted(d["key"] for d in letters["dead_letters"]) == [  # normalised links
        "https://news.example.com/foxtrot/0", "https://news.example.com/foxtrot/1"]
    assert all(d["attempts"] == 2 and d["source"] == "foxtrot" for d in letters["dead_letters"])
    table = running.cli("dead-letters")
    assert table.returncode == 0 and "2 dead letters" in table.stdout

    # The operator fixes the sink and sends them again: each is delivered once.
    (workdir / "blocked").unlink()
    replay = running.cli("dead-letters", "--replay-all")
    assert replay.returncode == 0 and "2 dead letters sent again" in replay.stdout
    wait_for(lambda: len(lines(workdir / "blocked" / "alerts.jsonl")) >= 2, 30,
             message="replayed items delivered")
    assert listed()["total"] == 0
    assert [e for e in running.admin_events() if e["event"] == "dead_letters_replayed"]
    running.cli("stop")
    assert running.wait_exit(60) == 0
    assert_each_alerted_once(lines(workdir / "blocked" / "alerts.jsonl"), 2)


def lines(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_bad_dead_letters_request_gets_a_clear_error(run_supervisor, workdir):
    running = run_supervisor(base_config(workdir, [], actors={"fetcher": {"instances": 0}}))
    wait_for(running.all_running, 30, message="actors running")
    from catalyst_config import load_config
    from supervisor.control import ControlError, request

    config = load_config(running.config_path, with_secrets=False)
    with pytest.raises(ControlError, match="list of keys"):
        request(config, "dead_letters", {"replay": 42})
    with pytest.raises(ControlError, match="limit"):
        request(config, "dead_letters", {"limit": "ten"})
    assert request(config, "dead_letters", {"replay": ["no-such-key"]}) == {"replayed": 0}
    assert request(config, "dead_letters", {}) == {"total": 0, "dead_letters": []}
    assert running.actor("dedupe-0")["restarts"] == 0


class Killer(threading.Thread):
    """SIGKILLs a random actor of every kind, each every 0.5 to 2 s."""

    def __init__(self, running, kinds, seconds: float):
        super().__init__(daemon=True)
        self.running, self.kinds, self.seconds = running, kinds, seconds
        self.kills: collections.Counter[str] = collections.Counter()

    def run(self) -> None:
        rng = random.Random(7)
        deadline = time.monotonic() + self.seconds
        next_kill = {k: time.monotonic() + rng.uniform(0.5, 2.0) for k in self.kinds}
        while time.monotonic() < deadline:
            kind = min(next_kill, key=next_kill.get)
            time.sleep(max(0.0, next_kill[kind] - time.monotonic()))
            status = self.running.status()
            victims = [a for a in (status or {}).get("actors", [])
                       if a["kind"] == kind and a["pid"] and a["state"] == "running"]
            if victims:
                try:
                    os.kill(rng.choice(victims)["pid"], signal.SIGKILL)
                    self.kills[kind] += 1
                except ProcessLookupError:
                    pass
            next_kill[kind] = time.monotonic() + rng.uniform(0.5, 2.0)


@pytest.mark.soak
def test_chaos_sigkill_of_every_actor_kind_loses_nothing_and_duplicates_nothing(
        wire, run_supervisor, workdir):
    total, seconds = 1200, 40.0
    items = make_items("chaos", total)
    started = time.monotonic()

    def published() -> list[dict]:  # everything so far, re-served on every poll
        n = min(total, int((time.monotonic() - started) / seconds * total) + 20)
        return items[:n]

    feeds = [{"name": "chaos", "kind": "pr", "url": wire.serve_feed("/chaos.xml", published)}]
    cfg = base_config(workdir, feeds, dedupe={"lease_s": 2.0, "max_attempts": 1000},
                      actors={"alert": {"instances": 2}, "llm": {"instances": 2}})
    cfg["supervisor"]["restart"] = {"backoff_initial_s": 0.05, "backoff_max_s": 0.5,
                                    "max_restarts": 1000, "period_s": 60}
    running = run_supervisor(cfg)
    wait_for(running.all_running, 30, message="all running")
    killer = Killer(running, ("fetcher", "dedupe", "llm", "alert"), seconds)
    killer.start()
    killer.join(seconds + 30)
    wait_for(lambda: len({a["key"] for a in running.alerts()}) >= total, 120,
             message=f"all {total} items alerted")
    running.cli("stop")
    assert running.wait_exit(90) == 0
    print(f"kills: {dict(killer.kills)}; alerts: {len(running.alerts())}")
    assert all(killer.kills[k] >= 10 for k in ("fetcher", "dedupe", "llm", "alert")), killer.kills
    assert_each_alerted_once(running.alerts(), total)
    for db in ("seen.db", "alerts.db"):
        assert integrity_ok(workdir / "data" / db)
