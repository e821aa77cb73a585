"""Pausing and resuming one feed (`catalyst-supervisor pause FEED`, `resume FEED`): a paused
feed is not polled, its pause outlives a restart of the fetcher and of the whole
supervisor, and on resume what it queued meanwhile is alerted once."""

from __future__ import annotations

import collections
import json
import logging
import os
import stat
import threading
import time
from concurrent.futures import Future

import pytest

from actors.base import ActorSpec
from actors.errors import CommandError
from actors.fetcher import FetcherActor
from catalyst_config import config_from_dict, load_config
from catalyst_config.pauses import (MAX_PAUSED_FEEDS, PAUSES_FILE, pauses_path, read_paused,
                                    write_paused)
from supervisor.control import ControlError, request
from tests.conftest import base_config, rss, wait_for
from tests.test_metrics import free_port, scrape, value
from tests.test_pipeline import make_items

POLLS = 5  # polls of the other feed that must pass while the paused one is not polled


def two_feeds_config(root, **extra):
    return config_from_dict({
        "run_dir": str(root / "run"), "data_dir": str(root / "data"),
        "feeds": [{"name": "alpha", "kind": "pr", "url": "http://127.0.0.1:9/a.xml"},
                  {"name": "beta", "kind": "pr", "url": "http://127.0.0.1:9/b.xml"}],
        **extra}, with_secrets=False)


# The paused-feeds file ------------------------------------------------------------


def test_paused_feeds_survive_a_round_trip_through_a_private_file(tmp_path):
    cfg = two_feeds_config(tmp_path)
    (tmp_path / "data").mkdir()
    assert read_paused(cfg) == set()  # no file: nothing paused
    write_paused(cfg, {"beta"})
    assert read_paused(cfg) == {"beta"}
    assert stat.S_IMODE(os.stat(pauses_path(cfg)).st_mode) == 0o600
    write_paused(cfg, ["alpha", "beta", "alpha"])
    assert read_paused(cfg) == {"alpha", "beta"}
    write_paused(cfg, set())
    assert read_paused(cfg) == set()
    assert os.listdir(tmp_path / "data") == [PAUSES_FILE]  # no temporary file left behind


@pytest.mark.parametrize("content", [
    b"{not json", b"\xff\xfe\x00garbage", b"[\"alpha\"]", b'{"paused": "alpha"}',
    b'{"paused": ["alpha", 7]}', b"[" * 100_000 + b"]" * 100_000, b""])
def test_a_corrupt_pauses_file_means_nothing_paused_with_a_warning(tmp_path, caplog, content):
    cfg = two_feeds_config(tmp_path)
    (tmp_path / "data").mkdir()
    pauses_path(cfg).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="catalyst.config"):
        assert read_paused(cfg) == set()
    assert "treating no feed as paused" in caplog.text


def test_an_unreadable_pauses_file_means_nothing_paused_with_a_warning(tmp_path, caplog):
    cfg = two_feeds_config(tmp_path)
    pauses_path(cfg).mkdir(parents=True)  # a directory where the file should be
    with caplog.at_level(logging.WARNING, logger="catalyst.config"):
        assert read_paused(cfg) == set()
    assert "cannot read" in caplog.text


def test_paused_names_that_are_no_configured_feed_are_ignored(tmp_path):
    cfg = two_feeds_config(tmp_path)
    (tmp_path / "data").mkdir()
    pauses_path(cfg).write_text(json.dumps({"paused": ["alpha", "removed-by-a-reload"]}))
    assert read_paused(cfg) == {"alpha"}


# The fetcher's schedule, driven in this process (no polls run) ---------------------


@pytest.fixture
def fetcher(tmp_path):
    cfg = two_feeds_config(tmp_path)
    (tmp_path / "data").mkdir()
    write_paused(cfg, {"beta"})
    actor = FetcherActor(ActorSpec(name="fetcher-0", kind="fetcher", index=0, config=cfg,
                                   supervisor_pid=os.getpid(),
                                   actor_class="actors.fetcher:FetcherActor"))
    actor.setup()
    yield actor
    actor.teardown()
    actor.ctx.destroy(linger=0)


def test_the_fetcher_schedules_no_paused_feed_and_a_resumed_one_at_once(fetcher):
    now = time.monotonic()
    assert fetcher.schedule.names == ["alpha"]  # beta was paused in the file at start
    assert fetcher.stats()["feeds"]["feeds"]["beta"]["paused"] is True  # shown, never polled
    assert fetcher.command("pause_feeds", {"paused": ["alpha", "beta"]}) == \
        {"paused": ["alpha", "beta"]}
    # Nothing to poll: nothing due and no wake-up for it (no busy loop), no cycle to end.
    assert fetcher.schedule.next_due() == float("inf")
    assert fetcher.next_deadline(now) >= now + fetcher.heartbeat_interval
    fetcher.command("pause_feeds", {"paused": []})
    assert sorted(fetcher.schedule.due(time.monotonic())) == ["alpha", "beta"]
    # A feed paused while polled finishes that poll; resumed meanwhile, it waits for it
    # rather than being started twice.
    fetcher.schedule.started("beta")
    fetcher.polls["beta"] = (Future(), now)
    fetcher.command("pause_feeds", {"paused": ["beta"]})
    fetcher.command("pause_feeds", {"paused": []})
    assert fetcher.schedule.due(time.monotonic()) == ["alpha"]
    assert fetcher.schedule.known("beta") and "beta" not in fetcher.stats()["feeds"]["feeds"]


def test_a_pause_made_while_the_fetcher_connects_is_read_once_the_supervisor_knows_it(
        fetcher):
    fetcher.max_cycles = 0  # tick() starts no poll: only the pauses are under test
    # Written after setup read the file, its pause_feeds lost on the way.
    write_paused(fetcher.config, {"alpha", "beta"})
    fetcher.tick(time.monotonic())
    assert fetcher.schedule.names == ["alpha"]  # no control message yet: nothing to go on
    fetcher.last_ping = time.monotonic()  # the supervisor's first ping arrived
    fetcher.tick(time.monotonic())
    assert fetcher.schedule.names == []


def test_a_pause_feeds_the_fetcher_got_is_not_undone_by_reading_the_file(fetcher):
    fetcher.max_cycles = 0
    fetcher.command("pause_feeds", {"paused": ["alpha"]})
    os.unlink(pauses_path(fetcher.config))  # e.g. a fetcher on a host without the file
    fetcher.last_ping = time.monotonic()
    fetcher.tick(time.monotonic())
    assert fetcher.schedule.names == ["beta"]


def test_a_reload_keeps_the_fetchers_pauses(fetcher):
    feeds = [{"name": n, "kind": "pr", "url": f"http://127.0.0.1:9/{n}.xml"}
             for n in ("alpha", "beta", "gamma")]
    done = fetcher.command("reconfigure", {"feeds": feeds, "poll_interval_s": 60,
                                           "sec_user_agent": None})
    assert done["added"] == ["gamma"]
    assert sorted(fetcher.schedule.names) == ["alpha", "gamma"]
    assert fetcher.stats()["feeds"]["feeds"]["beta"]["paused"] is True


@pytest.mark.parametrize("args", [
    {}, {"paused": "alpha"}, {"paused": [["alpha"]]}, {"paused": [7]},
    {"paused": ["x" * 5000]}, {"paused": ["alpha"] * (MAX_PAUSED_FEEDS + 1)}])
def test_the_fetcher_refuses_a_bad_paused_list_and_keeps_its_pauses(fetcher, args):
    with pytest.raises(CommandError, match="pause_feeds: paused must be a list"):
        fetcher.command("pause_feeds", args)
    assert fetcher.schedule.names == ["alpha"]


# The running service ---------------------------------------------------------------


class HeldFeed:
    """A feed whose next poll can be held open until the test lets it answer."""

    def __init__(self, items: list[dict]):
        self.items = items
        self.hold, self.held, self.release = (threading.Event() for _ in range(3))

    def __call__(self) -> tuple[int, dict, bytes]:
        if self.hold.is_set():
            self.hold.clear()
            self.held.set()
            self.release.wait(20)
        return 200, {"Content-Type": "application/rss+xml"}, rss(list(self.items))


def test_a_paused_feed_stays_unpolled_across_restarts_and_resumes_without_loss(
        wire, run_supervisor, workdir):
    busy_items, quiet_items = make_items("busy", 1), make_items("quiet", 1)
    quiet = HeldFeed(quiet_items)
    wire.routes["/quiet.xml"] = quiet
    feeds = [{"name": "busy", "kind": "pr",
              "url": wire.serve_feed("/busy.xml", lambda: list(busy_items))},
             {"name": "quiet", "kind": "pr", "url": wire.base_url + "/quiet.xml"}]
    port = free_port()
    # A long read timeout: the held poll must outlast a CLI start on a busy machine.
    cfg = base_config(workdir, feeds, fetch={"read_timeout_s": 15},
                      supervisor={"metrics_port": port})
    running = run_supervisor(cfg)
    config = load_config(running.config_path, with_secrets=False)

    def alerted() -> collections.Counter:
        return collections.Counter(a["link"] for a in running.alerts())

    def hits(path: str) -> int:
        with wire.lock:
            return wire.hits.get(path, 0)

    def quiet_stats(r=running) -> dict | None:
        for actor in (r.status() or {}).get("actors", []):
            feed = (((actor.get("stats") or {}).get("feeds") or {}).get("feeds") or {})
            if "quiet" in feed:
                return feed["quiet"]
        return None

    def busy_polled_and_alerted(item: dict, since: int) -> bool:
        return hits("/busy.xml") >= since + POLLS and alerted()[item["link"]] >= 1

    wait_for(lambda: {busy_items[0]["link"], quiet_items[0]["link"]} <= set(alerted()), 30,
             message="each feed's first item alerted")

    # Paused while a poll of it is under way: that poll ends normally, its item alerted.
    quiet_items += make_items("quiet", 1, start=1)
    quiet.hold.set()
    assert quiet.held.wait(15), "the next poll of quiet never came"
    paused = running.cli("pause", "quiet", "--json")
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout) == {"feed": "quiet", "paused": ["quiet"]}
    wait_for(lambda: (s := quiet_stats()) and s.get("paused"), 10,
             message="the fetcher holding quiet paused")
    quiet.release.set()
    wait_for(lambda: alerted()[quiet_items[1]["link"]] == 1, 20,
             message="the item of the poll under way at the pause alerted")
    pauses = workdir / "data" / PAUSES_FILE
    assert json.loads(pauses.read_text()) == {"paused": ["quiet"]}
    assert stat.S_IMODE(os.stat(pauses).st_mode) == 0o600

    # Not polled while the other feed is, again and again; its new item waits.
    quiet_hits = hits("/quiet.xml")
    quiet_items += make_items("quiet", 1, start=2)
    busy_items += make_items("busy", 1, start=1)
    since = hits("/busy.xml")
    wait_for(lambda: busy_polled_and_alerted(busy_items[1], since), 30,
             message="busy polled and its new item alerted")
    assert hits("/quiet.xml") == quiet_hits
    status = running.cli("status")
    assert status.returncode == 0, status.stderr
    quiet_row = next(line for line in status.stdout.splitlines() if line.startswith("quiet "))
    assert "paused" in quiet_row
    metrics = scrape(port)
    assert value(metrics, "catalyst_feed_paused", feed="quiet") == 1
    assert value(metrics, "catalyst_feed_paused", feed="busy") == 0

    # A new fetcher process reads the pause at start.
    old_pid = running.actor("fetcher-0")["pid"]
    restarted = running.cli("restart", "fetcher-0")
    assert restarted.returncode == 0, restarted.stderr
    wait_for(lambda: (a := running.actor("fetcher-0")) and a["pid"] != old_pid
             and a["state"] == "running", 30, message="fetcher-0 back")
    busy_items += make_items("busy", 1, start=2)
    since = hits("/busy.xml")
    wait_for(lambda: busy_polled_and_alerted(busy_items[2], since), 30,
             message="busy polled by the new fetcher")
    assert hits("/quiet.xml") == quiet_hits
    assert quiet_stats()["paused"] is True

    # So does a new supervisor on the same data_dir.
    stopped = running.cli("stop", "--wait", "--timeout", "60")
    assert stopped.returncode == 0, stopped.stderr
    assert running.wait_exit(30) == 0
    again = run_supervisor(cfg)
    wait_for(again.all_running, 30, message="the second supervisor's actors running")
    busy_items += make_items("busy", 1, start=3)
    since = hits("/busy.xml")
    wait_for(lambda: hits("/busy.xml") >= since + POLLS
             and collections.Counter(a["link"] for a in again.alerts())[busy_items[3]["link"]],
             30, message="busy polled under the second supervisor")
    assert hits("/quiet.xml") == quiet_hits
    assert wait_for(lambda: quiet_stats(again), 10, message="quiet in status")["paused"] is True

    # Bad arguments: clear errors, nothing changed, nothing restarted.
    pids = {a["name"]: a["pid"] for a in again.status()["actors"]}
    unknown = again.cli("pause", "nosuch")
    assert unknown.returncode == 1
    assert "pause: feed must be the name of a configured feed (have: busy, quiet), got " \
           "'nosuch'" in unknown.stderr
    assert wire.base_url not in unknown.stderr  # feed URLs may carry keys: never shown
    for name, args, says in (
            ("pause", {"feed": ["quiet"]}, "got list"),
            ("resume", {"feed": 7}, "got 7"),
            ("resume", {}, "got None"),
            ("pause", {"feed": "busy", "name": "quiet"}, "pause takes only feed")):
        with pytest.raises(ControlError, match=says):
            request(config, name, args)
    assert {a["name"]: a["pid"] for a in again.status()["actors"]} == pids
    assert again.all_running()
    assert json.loads(pauses.read_text()) == {"paused": ["quiet"]}

    # Resumed: polled at once, and what it queued meanwhile alerted exactly once.
    resumed = again.cli("resume", "quiet", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {"feed": "quiet", "paused": []}
    wait_for(lambda: hits("/quiet.xml") >= quiet_hits + 3 and collections.Counter(
        a["link"] for a in again.alerts())[quiet_items[2]["link"]], 20,
        message="quiet polled again and its queued item alerted")
    assert again.cli("stop", "--wait", "--timeout", "60").returncode == 0
    assert again.wait_exit(30) == 0
    every = collections.Counter(a["link"] for a in again.alerts())
    assert set(every) == {i["link"] for i in busy_items + quiet_items}
    assert max(every.values()) == 1, every
