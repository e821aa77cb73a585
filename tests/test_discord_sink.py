"""The Discord webhook sink against a loopback fake Discord: pace, 429s, charts, failures,
and the webhook token never leaking."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from actors.errors import SinkError
from actors.sinks.discord import DiscordSink
from actors.sinks.discord.pacing import RateLimits
from catalyst_config import parse_webhook_url
from tests.fake_discord import FakeDiscord
from tests.test_discord_embed import record

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00fake-chart" * 100


@pytest.fixture
def discord():
    with FakeDiscord(limit=5, window_s=0.5) as fake:
        yield fake


def make_sink(url: str, **kw) -> DiscordSink:
    kw.setdefault("limits", RateLimits())
    kw.setdefault("default_window_s", 0.5)
    kw.setdefault("retry_initial_s", 0.05)
    return DiscordSink(url, name="discord:DISCORD_WEBHOOK_URL", **kw)


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def assert_no_secret(url: str, *texts: object) -> None:
    for text in texts:
        assert token_of(url) not in str(text)
        assert url not in str(text)


def test_a_burst_arrives_whole_in_order_at_discords_pace(discord, caplog):
    caplog.set_level(logging.DEBUG)
    url = discord.add_webhook()
    sink = make_sink(url)
    started = time.monotonic()
    for i in range(17):
        sink.deliver(record(key=f"k{i}", title=f"headline {i}"))
    took = time.monotonic() - started
    got = discord.received()
    assert [m.embed["title"] for m in got] == [f"headline {i}" for i in range(17)]
    assert all(m.waited for m in got)  # ?wait=true: errors are seen
    assert discord.count(429) == 0
    assert took >= 3 * 0.5  # 17 posts at 5 per 0.5 s need three more windows
    assert sink.stats()["posted"] == 17
    assert_no_secret(url, caplog.text, sink.stats())


def test_chart_goes_as_multipart_attachment_shown_in_the_embed(discord, tmp_path):
    url = discord.add_webhook()
    chart = tmp_path / "ACMB-1.png"
    chart.write_bytes(PNG)
    make_sink(url).deliver(record(), str(chart))
    (msg,) = discord.received()
    assert msg.files == {"files[0]": ("chart.png", PNG)}
    assert msg.embed["image"]["url"] == "attachment://chart.png"
    assert msg.payload["attachments"][0]["filename"] == "chart.png"


def test_a_missing_chart_file_still_sends_the_text(discord, tmp_path):
    url = discord.add_webhook()
    make_sink(url).deliver(record(), str(tmp_path / "gone.png"))
    (msg,) = discord.received()
    assert msg.files == {} and "image" not in msg.embed


def test_two_clients_on_one_webhook_get_429s_and_lose_nothing(discord):
    url = discord.add_webhook()
    a, b = make_sink(url), make_sink(url)  # separate limiters: each learns of the other by 429
    threads = [threading.Thread(target=lambda s=s, n=n: [s.deliver(record(title=f"{n}{i}"))
                                                         for i in range(8)])
               for s, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    titles = [m.embed["title"] for m in discord.received()]
    assert sorted(titles) == sorted([f"a{i}" for i in range(8)] + [f"b{i}" for i in range(8)])
    assert [t for t in titles if t[0] == "a"] == [f"a{i}" for i in range(8)]
    assert discord.count(429) >= 1
    assert a.stats().get("429", 0) + b.stats().get("429", 0) == discord.count(429)


def test_global_429_is_waited_out_then_delivered(discord):
    url = discord.add_webhook()
    sink = make_sink(url)
    discord.global_limit(count=1, retry_after=0.6)
    started = time.monotonic()
    sink.deliver(record(title="after the global limit"))
    assert time.monotonic() - started >= 0.6
    assert [m.embed["title"] for m in discord.received()] == ["after the global limit"]
    assert discord.count(429) == 1
    assert sink.stats()["429_global"] == 1


@pytest.mark.parametrize("break_it,status", [("token", 401), ("delete", 404)])
def test_bad_webhook_disables_the_sink_with_no_retry_storm(
        discord, caplog, break_it, status):
    url = discord.add_webhook()
    webhook_id = url.split("/")[-2]
    if break_it == "token":
        url = discord.url(webhook_id, token="wrong-token-abcdefghijklmnop")
    else:
        discord.delete_webhook(webhook_id)
    sink = make_sink(url)
    with pytest.raises(SinkError) as first:
        sink.deliver(record())
    assert first.value.permanent
    assert sink.disabled and str(status) in sink.disabled
    with pytest.raises(SinkError) as second:  # no request at all now
        sink.deliver(record())
    assert second.value.permanent
    assert len(discord.requests) == 1 and discord.count(status) == 1
    assert f"HTTP {status}" in str(first.value) and "DISCORD_WEBHOOK_URL" in str(first.value)
    assert sink.stats()[f"disabled_by_{status}"] == 1
    assert_no_secret(url, first.value, second.value, caplog.text, sink.stats(), sink.disabled)


def test_server_errors_are_retried_with_an_outage_event_and_recovery(discord):
    url = discord.add_webhook()
    sink = make_sink(url, outage_after_s=0.0)
    discord.fail_next(500, 502, 503)
    sink.deliver(record(title="survives"))
    assert [m.embed["title"] for m in discord.received()] == ["survives"]
    events = [e["event"] for e in sink.pop_events()]
    assert events == ["sink_outage", "sink_recovered"]
    assert sink.stats()["failures"] == 3


def test_a_rejected_embed_is_sent_as_plain_text(discord):
    url = discord.add_webhook()
    sink = make_sink(url)
    discord.fail_next(400)
    sink.deliver(record(title="plain please", tickers=["ACMB"]))
    (msg,) = discord.received()
    assert "embeds" not in msg.payload and "plain please" in msg.payload["content"]
    assert sink.pop_events()[0]["event"] == "sink_rejected"


def test_a_message_rejected_twice_fails_the_item_not_the_sink(discord):
    url = discord.add_webhook()
    sink = make_sink(url)
    discord.fail_next(400, 400)
    with pytest.raises(SinkError) as err:
        sink.deliver(record())
    assert not err.value.permanent and not sink.disabled
    sink.deliver(record(title="next one"))
    assert [m.embed["title"] for m in discord.received()] == ["next one"]


def test_too_large_drops_the_chart_not_the_alert(discord, tmp_path):
    url = discord.add_webhook()
    chart = tmp_path / "c.png"
    chart.write_bytes(PNG)
    discord.fail_next(413)
    make_sink(url).deliver(record(title="text survives"), str(chart))
    (msg,) = discord.received()
    assert msg.files == {} and msg.embed["title"] == "text survives"


def test_unreachable_discord_never_shows_the_url(caplog):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/webhooks/123456/tok-SECRET-abcdefghijklmnopqrstuvwxyz"
    sink = make_sink(url, give_up_after_s=0.3, timeout_s=0.5)
    with pytest.raises(SinkError) as err:
        sink.deliver(record())
    assert sink.stats()["failures"] >= 1
    assert_no_secret(url, err.value, caplog.text, sink.stats(), sink.pop_events())


def test_close_interrupts_a_long_wait(discord):
    url = discord.add_webhook()
    sink = make_sink(url)
    discord.global_limit(count=1, retry_after=30)
    errors = []

    def deliver():
        try:
            sink.deliver(record())
        except SinkError as exc:
            errors.append(exc)

    t = threading.Thread(target=deliver)
    t.start()
    deadline = time.monotonic() + 5
    while discord.count(429) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    sink.close()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - started < 2
    assert errors and "closed" in str(errors[0])


@pytest.mark.parametrize("url", [
    "https://discord.com/api/channels/1/messages",
    "http://discord.com/api/webhooks/1/tok-SECRET-abc",  # plain http off loopback
    "ftp://discord.com/api/webhooks/1/tok-SECRET-abc",
    "not a url at all",
])
def test_bad_webhook_urls_are_refused_without_quoting_them(url):
    with pytest.raises(ValueError) as err:
        parse_webhook_url(url)
    assert "SECRET" not in str(err.value)
    with pytest.raises(SinkError) as err2:
        DiscordSink(url, name="discord:X")
    assert err2.value.permanent and "SECRET" not in str(err2.value)


def test_versioned_and_real_webhook_urls_are_accepted():
    assert parse_webhook_url("https://discord.com/api/webhooks/123/abc-DEF_g") == ("123", "abc-DEF_g")
    assert parse_webhook_url("https://discord.com/api/v10/webhooks/9/t?thread_id=5") == ("9", "t")
