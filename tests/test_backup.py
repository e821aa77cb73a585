"""Backups and upgrades: `catalyst-supervisor backup DIR` copies every SQLite file online
through the actor that owns it, and every file carries its schema version (migrated at
start when older, refused when newer)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat

import pytest

from actors.classification.cache import SCHEMA as LLM_SCHEMA_V1
from actors.classification.cache import open_llm_db
from actors.storage.sqlite import SchemaTooNewError, backup
from catalyst_config import SqliteConfig, load_config
from supervisor.control import ControlError, request
from tests.conftest import base_config, wait_for
from tests.test_pipeline import GrowingFeed, make_items


def _keys(path, sql: str) -> set[str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {k for (k,) in db.execute(sql)}
    finally:
        db.close()


def _version(path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_backup_copies_every_file_while_claims_continue_and_a_restore_alerts_nothing_twice(
        wire, run_supervisor, workdir):
    items = make_items("alpha", 200)
    feeds = [{"name": "alpha", "kind": "pr",
              "url": wire.serve_feed("/alpha.xml", GrowingFeed(items, 10, 4))}]
    running = run_supervisor(base_config(workdir, feeds))
    wait_for(lambda: len(running.alerts()) >= 10, 60, message="first alerts")
    claimed_before = _keys(workdir / "data" / "seen.db", "SELECT key FROM ledger")
    assert claimed_before

    target = workdir / "backups" / "one"
    done = running.cli("backup", str(target), "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["failed"] == []
    assert [c["file"] for c in answer["copied"]] == ["seen.db", "alerts.db"]
    for c in answer["copied"]:
        assert c["bytes"] == (target / c["file"]).stat().st_size and c["pages"] > 0
    # Claims went on: the feed keeps growing and more alerts come after the copy.
    after = len(running.alerts())
    wait_for(lambda: len(running.alerts()) > after + 8, 60, message="alerts after the backup")

    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert sorted(os.listdir(target)) == ["alerts.db", "seen.db"]  # no temporary left
    for name in ("seen.db", "alerts.db"):
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o600
        db = sqlite3.connect(target / name)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    assert claimed_before <= _keys(target / "seen.db", "SELECT key FROM ledger")
    assert _version(target / "seen.db") == 2 and _version(target / "alerts.db") == 1

    # Refused with a clear error: a relative path, and the data_dir itself.
    config = load_config(running.config_path, with_secrets=False)
    with pytest.raises(ControlError, match="absolute path"):
        request(config, "backup", {"dir": "relative/dir", "file": "seen.db"})
    refused = running.cli("backup", str(workdir / "data"))
    assert refused.returncode == 1
    assert "is the data_dir" in refused.stderr and "seen.db: not copied" in refused.stderr

    assert running.cli("stop", "--wait", "--timeout", "60").returncode == 0

    # A service on a data_dir restored from the copies: what the copy knows as delivered
    # is never alerted again, and everything else is alerted once.
    restored = workdir / "restored"
    restored.mkdir(mode=0o700)
    for name in ("seen.db", "alerts.db"):
        (restored / name).write_bytes((target / name).read_bytes())
    done_in_copy = _keys(target / "alerts.db", "SELECT key FROM sent WHERE state = 1")
    sending_in_copy = _keys(target / "alerts.db", "SELECT key FROM sent WHERE state = 0")
    alerted_first = [a["key"] for a in running.alerts()]
    full = [{"name": "alpha", "kind": "pr",
             "url": wire.serve_feed("/alpha-all.xml", lambda: items)}]
    # The same sink (its journal name is its path), as a restore on the same host has.
    again = run_supervisor(base_config(workdir, full, data_dir="restored"), "--cycles", "3")
    assert again.wait_exit(120) == 0, again.log_text()[-3000:]
    keys = [a["key"] for a in again.alerts()[len(alerted_first):]]
    assert len(keys) == len(set(keys)), "an item alerted twice"
    assert not set(keys) & done_in_copy
    # Everything else is alerted, but for what the copy caught mid-delivery and the sink
    # shows was written (the journal's crash check).
    missing = {it["link"].split("?")[0] for it in items} - done_in_copy - set(keys)
    assert missing <= sending_in_copy

def test_a_file_from_a_newer_version_is_refused_and_left_in_place(wire, run_supervisor,
                                                                   workdir):
    data = workdir / "data"
    data.mkdir(mode=0o700)
    db = sqlite3.connect(data / "seen.db")
    db.execute("CREATE TABLE ledger (seq INTEGER PRIMARY KEY, future_column TEXT)")
    db.execute("INSERT INTO ledger VALUES (1, 'from a newer release')")
    db.execute("PRAGMA user_version = 7")
    db.commit()
    db.close()
    before = (data / "seen.db").read_bytes()
    feeds = [{"name": "alpha", "kind": "pr",
              "url": wire.serve_feed("/alpha.xml", lambda: make_items("alpha", 3))}]
    running = run_supervisor(base_config(workdir, feeds))

    def refused():
        return [e for e in running.admin_events() if e.get("event") == "store_schema_too_new"]
    wait_for(refused, 30, message="the admin event for a newer seen.db")
    message = refused()[0]["message"]
    assert "seen.db" in message and "schema version 7" in message and "version 2" in message
    # The dedupe actor stays up with its store away: claims are refused, nothing alerted.
    dedupe = running.actor("dedupe-0") or {}
    assert dedupe.get("state") == "running"
    assert running.alerts() == []
    assert (data / "seen.db").read_bytes() == before  # untouched, not moved aside
    assert not [p for p in os.listdir(data) if ".corrupt-" in p]
    denied = running.cli("backup", str(workdir / "copies"))
    assert denied.returncode == 1 and "seen.db: not copied" in denied.stderr
    assert len(refused()) == 1  # one event for the outage, not one per try


def test_an_old_version_file_is_migrated_at_start_with_its_data_kept(wire, run_supervisor,
                                                                     workdir):
    items = make_items("alpha", 6)
    shown = {"n": 3}
    feeds = [{"name": "alpha", "kind": "pr",
              "url": wire.serve_feed("/alpha.xml", lambda: items[:shown["n"]])}]
    first = run_supervisor(base_config(workdir, feeds), "--cycles", "2")
    assert first.wait_exit(90) == 0, first.log_text()[-3000:]
    old_keys = {a["key"] for a in first.alerts()}
    assert len(old_keys) == 3
    # Make the files what the release before schema versions wrote: no user_version, and
    # seen.db without its feeds_polled table.
    data = workdir / "data"
    db = sqlite3.connect(data / "seen.db")
    db.execute("DROP TABLE feeds_polled")
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()
    db = sqlite3.connect(data / "alerts.db")
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()

    # With first_poll mark_seen, a ledger from before must count its feed as polled: new
    # items are alerted, not silently marked seen, and old ones not again.
    shown["n"] = 6
    cfg = base_config(workdir, feeds, fetch={"first_poll": "mark_seen"})
    second = run_supervisor(cfg, "--cycles", "2")
    assert second.wait_exit(90) == 0, second.log_text()[-3000:]
    keys = [a["key"] for a in second.alerts()]
    assert len(keys) == 6 and len(set(keys)) == 6
    assert _version(data / "seen.db") == 2 and _version(data / "alerts.db") == 1
    assert old_keys <= _keys(data / "seen.db", "SELECT key FROM ledger")
    assert _keys(data / "seen.db", "SELECT name FROM feeds_polled") == {"alpha"}


def test_llm_cache_migrates_refuses_a_newer_file_and_backs_up_online(tmp_path):
    path = tmp_path / "data" / "llm_cache.db"
    path.parent.mkdir()
    db = sqlite3.connect(path)
    db.executescript(LLM_SCHEMA_V1)  # version 1: analyses only, no user_version
    db.execute("INSERT INTO analyses (key, content, analysis, created, expires) "
               "VALUES ('k1', 'c1', x'00', 1, 2)")
    db.commit()
    db.close()

    live = open_llm_db(path, SqliteConfig())
    assert live.execute("PRAGMA user_version").fetchone()[0] == 2
    assert live.execute("SELECT key FROM analyses").fetchall() == [("k1",)]
    live.execute("INSERT INTO feed_usage (day, feed, actor) VALUES ('d', 'f', 'a')")
    other = sqlite3.connect(path, isolation_level=None)  # another llm instance writing
    other.execute("INSERT INTO analyses (key, content, analysis, created, expires) "
                  "VALUES ('k2', 'c2', x'00', 1, 2)")
    copied = backup(live, "llm_cache.db", tmp_path / "copies", what="llm cache")
    other.execute("INSERT INTO analyses (key, content, analysis, created, expires) "
                  "VALUES ('k3', 'c3', x'00', 1, 2)")
    assert copied["file"] == "llm_cache.db" and copied["pages"] > 0
    assert _keys(tmp_path / "copies" / "llm_cache.db",
                 "SELECT key FROM analyses") == {"k1", "k2"}
    live.execute("PRAGMA user_version = 3")
    live.close()
    other.close()

    before = path.read_bytes()
    with pytest.raises(SchemaTooNewError, match="schema version 3, newer than version 2"):
        open_llm_db(path, SqliteConfig(), on_corrupt=lambda m: pytest.fail(m))
    assert path.read_bytes() == before
