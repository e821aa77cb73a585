"""The admin sink on Discord: never blocks the supervisor, deduplicates, rate limits, and
falls back to the log when Discord will not take an event."""

from __future__ import annotations

import time

import pytest

import supervisor.admin as admin_mod
from actors.sinks.discord import DiscordSink
from actors.sinks.discord.pacing import RateLimits
from catalyst_config import Secrets, config_from_dict
from supervisor.admin import AdminNotifier
from tests.conftest import wait_for
from tests.fake_discord import FakeDiscord


@pytest.fixture
def discord():
    with FakeDiscord(limit=5, window_s=0.5) as fake:
        yield fake


def admin_config(url: str):
    return config_from_dict(
        {"alerts": {"admin": {"type": "discord", "webhook_url_env": "DISCORD_ADMIN_WEBHOOK_URL",
                              "retry_initial_s": 0.05}}},
        secrets=Secrets({"DISCORD_ADMIN_WEBHOOK_URL": url}))


def own_sink(url: str, **kw) -> DiscordSink:
    return DiscordSink(url, name="discord:DISCORD_ADMIN_WEBHOOK_URL", limits=RateLimits(),
                       default_window_s=0.5, **kw)


class FakeTime:
    """supervisor.admin's clock, moved by the test."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now


def test_admin_events_arrive_on_discord_as_embeds(discord):
    url = discord.add_webhook()
    notifier = AdminNotifier(admin_config(url))
    try:
        notifier.event("restart", "alert-0", "leak", "alert-0 restarted: leak", level="warning")
        notifier.event("dead_letter", "dedupe-0", "max_attempts", "k gave up", level="error")
        got = discord.wait_for(2, 10)
        assert [m.embed["title"] for m in got] == ["restart: alert-0", "dead_letter: dedupe-0"]
        assert {f["name"]: f["value"] for f in got[0].embed["fields"]}["Reason"] == "leak"
        assert notifier.recent()[0]["event"] == "restart"
        wait_for(lambda: notifier.stats().get("sent") == 2, 5, message="sent counted")
    finally:
        notifier.close()


def test_event_never_blocks_the_supervisor_while_discord_is_limiting(discord, monkeypatch):
    monkeypatch.setattr(admin_mod, "CLOSE_FLUSH_S", 1.0)
    url = discord.add_webhook()
    discord.global_limit(count=1, retry_after=20)
    notifier = AdminNotifier(admin_config(url), sink=own_sink(url))
    try:
        started = time.monotonic()
        for i in range(20):
            notifier.event("outage", f"fetcher-{i}", "no_items", "feeds quiet")
        assert time.monotonic() - started < 0.5
    finally:
        closing = time.monotonic()
        notifier.close()
        assert time.monotonic() - closing < admin_mod.CLOSE_FLUSH_S + 3


def test_repeats_are_counted_and_reported_with_the_next_one(discord, monkeypatch):
    clock = FakeTime()
    monkeypatch.setattr(admin_mod, "time", clock)
    url = discord.add_webhook()
    notifier = AdminNotifier(admin_config(url), sink=own_sink(url))
    notifier.recent_keys = admin_mod.cachetools.TTLCache(1024, admin_mod.REPEAT_QUIET_S,
                                                         timer=clock.monotonic)
    try:
        for _ in range(10):  # a crash loop: one message, nine counted
            notifier.event("restart", "llm-0", "exit", "llm-0 restarted: exit")
        clock.now += admin_mod.REPEAT_QUIET_S + 1
        notifier.event("restart", "llm-0", "exit", "llm-0 restarted: exit")
        first, second = discord.wait_for(2, 10)
        assert "9 earlier repeats not sent" in second.embed["description"]
        assert notifier.stats()["repeats"] == 9
    finally:
        notifier.close()


def test_rate_limit_holds_back_a_flood_and_logs_it(discord, monkeypatch, caplog):
    clock = FakeTime()
    monkeypatch.setattr(admin_mod, "time", clock)
    url = discord.add_webhook()
    notifier = AdminNotifier(admin_config(url), sink=own_sink(url))
    try:
        for i in range(admin_mod.MAX_PER_MINUTE + 5):
            notifier.event("restart", f"fetcher-{i}", "exit", f"fetcher-{i} restarted")
        assert notifier.stats()["rate_limited"] == 5
        assert "held back by the rate limit" in caplog.text and "fetcher-34" in caplog.text
        clock.now += 61
        notifier.event("give_up", "alert-0", "exit", "alert-0 gave up")
        got = discord.wait_for(admin_mod.MAX_PER_MINUTE + 1, 30)
        assert "5 other event(s) held back" in got[-1].embed["description"]
    finally:
        notifier.close()


def test_a_deleted_admin_webhook_is_disabled_and_events_go_to_the_log(discord, caplog):
    url = discord.add_webhook()
    discord.delete_webhook(url.split("/")[-2])
    notifier = AdminNotifier(admin_config(url), sink=own_sink(url))
    try:
        notifier.event("restart", "alert-0", "exit", "first")
        notifier.event("give_up", "alert-0", "exit", "second")
        wait_for(lambda: notifier.stats().get("failed") == 2, 10, message="both failed")
        assert discord.count(404) == 1  # the second never reached Discord
        assert "disabled" in caplog.text and "second" in caplog.text
        assert url.rsplit("/", 1)[1] not in caplog.text
    finally:
        notifier.close()


def test_close_sends_what_is_queued(discord):
    url = discord.add_webhook()
    notifier = AdminNotifier(admin_config(url), sink=own_sink(url))
    for i in range(8):  # more than one window's worth
        notifier.event("restart", f"fetcher-{i}", "exit", "restarted")
    notifier.close()
    assert len(discord.received()) == 8


def test_console_admin_sink_still_works(capsys):
    notifier = AdminNotifier(config_from_dict({}))
    notifier.event("restart", "alert-0", "exit", "alert-0 restarted")
    notifier.close()
    assert "[admin] restart alert-0" in capsys.readouterr().out


def test_admin_webhook_absent_falls_back_to_the_log_and_malformed_is_a_config_error(caplog):
    from actors.errors import ConfigError

    data = {"alerts": {"admin": {"type": "discord",
                                 "webhook_url_env": "DISCORD_ADMIN_WEBHOOK_URL"}}}
    cfg = config_from_dict(data, secrets=Secrets({}))  # status/stop run without secrets
    notifier = AdminNotifier(cfg)
    notifier.event("restart", "alert-0", "exit", "alert-0 restarted")
    notifier.close()
    assert "DISCORD_ADMIN_WEBHOOK_URL" in caplog.text and "alert-0 restarted" in caplog.text
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, secrets=Secrets({"DISCORD_ADMIN_WEBHOOK_URL":
                                                "http://evil.example/api/webhooks/1/SECRETTOKEN"}))
    assert err.value.path == "alerts.admin.webhook_url_env"
    assert "SECRETTOKEN" not in str(err.value)
