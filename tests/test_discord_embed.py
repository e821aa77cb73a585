"""Discord embeds: whatever the item, the message stays within Discord's limits."""

from __future__ import annotations

import time

import pytest

from actors.sinks.discord.embed import (
    CONTENT_MAX,
    DESCRIPTION_MAX,
    EMBED_TOTAL_MAX,
    FIELD_NAME_MAX,
    FIELD_VALUE_MAX,
    FIELDS_MAX,
    FOOTER_MAX,
    NEGATIVE_COLOR,
    NEUTRAL_COLOR,
    POSITIVE_COLOR,
    TITLE_MAX,
    admin_embed,
    embed_size,
    fit,
    message_payload,
    plain_payload,
)
from tests.fake_discord import embed_problems


def record(**overrides) -> dict:
    base = {"key": "https://news.example.com/1", "title": "Acme Receives FDA Approval of Zelvantra",
            "link": "https://news.example.com/1", "source": "globenewswire", "kind": "pr",
            "form": None, "tickers": ["ACMB"], "category": "fda_approval", "score": 0.91,
            "sentiment": 0.8, "material": True, "summary": "Acme said today ...",
            "keywords": ["fda approval"], "provider": "rules", "published": 1_760_000_000.0,
            "fetched_at": 1_760_000_010.0, "alerted_at": 1_760_000_011.0, "attempt": 1,
            "chart": None}
    base.update(overrides)
    return base


def assert_within_limits(payload: dict, files: set[str] = frozenset()) -> None:
    assert embed_problems(payload, set(files)) == {}
    for embed in payload.get("embeds", []):
        assert len(embed.get("title", "")) <= TITLE_MAX
        assert len(embed.get("description", "")) <= DESCRIPTION_MAX
        assert len(embed.get("fields", [])) <= FIELDS_MAX
        for f in embed.get("fields", []):
            assert 1 <= len(f["name"]) <= FIELD_NAME_MAX
            assert 1 <= len(f["value"]) <= FIELD_VALUE_MAX
        assert len(embed.get("footer", {}).get("text", "")) <= FOOTER_MAX
        assert embed_size(embed) <= EMBED_TOTAL_MAX
    assert len(payload.get("content", "")) <= CONTENT_MAX


def test_a_schedule_13d_alert_names_the_holder_beside_the_issuers_tickers():
    payload = message_payload(record(form="SCHEDULE 13D", kind="sec", tickers=["ACMB"],
                                     holder="Vanmeer Asset Management LLC"))
    assert_within_limits(payload)
    fields = {f["name"]: f["value"] for f in payload["embeds"][0]["fields"]}
    assert fields["Tickers"] == "$ACMB" and fields["Holder"] == "Vanmeer Asset Management LLC"
    assert "Holder" not in {f["name"] for f in message_payload(record())["embeds"][0]["fields"]}


def test_alert_embed_carries_title_link_badges_tickers_footer_and_timestamp():
    payload = message_payload(record(form="8-K", tickers=["ACMB", "ACMBW"]), with_chart=True)
    assert_within_limits(payload, {"chart.png"})
    embed = payload["embeds"][0]
    assert embed["title"] == "Acme Receives FDA Approval of Zelvantra"
    assert embed["url"] == "https://news.example.com/1"
    assert "FDA approval" in embed["description"] and "8-K" in embed["description"]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Tickers"] == "$ACMB $ACMBW"
    assert fields["Sentiment"] == "+0.80"
    assert embed["footer"]["text"].startswith("globenewswire")
    assert embed["timestamp"].startswith("2025-10-09T")
    assert embed["color"] == POSITIVE_COLOR
    assert embed["image"] == {"url": "attachment://chart.png"}
    assert payload["attachments"] == [{"id": 0, "filename": "chart.png",
                                       "description": "price chart"}]
    assert payload["allowed_mentions"] == {"parse": []}


@pytest.mark.parametrize("sentiment,color", [(0.6, POSITIVE_COLOR), (-0.4, NEGATIVE_COLOR),
                                             (0.05, NEUTRAL_COLOR)])
def test_colour_follows_sentiment(sentiment, color):
    assert message_payload(record(sentiment=sentiment))["embeds"][0]["color"] == color


def test_long_title_is_clipped_to_256_with_an_ellipsis():
    embed = message_payload(record(title="Acme " * 400))["embeds"][0]
    assert len(embed["title"]) == TITLE_MAX
    assert embed["title"].endswith("\u2026")


def test_thirty_tickers_fit_in_one_field_and_a_thousand_are_summarised():
    tickers = [f"T{i:03d}" for i in range(30)]
    payload = message_payload(record(tickers=tickers))
    assert_within_limits(payload)
    value = {f["name"]: f["value"] for f in payload["embeds"][0]["fields"]}["Tickers"]
    assert value.split() == [f"${t}" for t in tickers]
    many = [f"Q{i:04d}" for i in range(1000)]
    payload = message_payload(record(tickers=many))
    assert_within_limits(payload)
    value = {f["name"]: f["value"] for f in payload["embeds"][0]["fields"]}["Tickers"]
    assert len(value) <= FIELD_VALUE_MAX and value.endswith("more")


def test_huge_summary_and_keywords_keep_the_total_under_6000():
    payload = message_payload(record(summary="word " * 50_000, title="T" * 5000,
                                     keywords=["k" * 3000] * 40, source="s" * 5000,
                                     tickers=[f"Z{i:03d}" for i in range(300)]),
                              with_chart=True)
    assert_within_limits(payload, {"chart.png"})
    assert payload["embeds"][0]["description"].endswith("\u2026")


def test_fit_drops_fields_from_the_end_when_they_alone_are_too_big():
    embed = fit({"title": "t", "description": "",
                 "fields": [{"name": "n" * 256, "value": "v" * 1024} for _ in range(30)],
                 "footer": {"text": "f"}})
    assert len(embed["fields"]) <= FIELDS_MAX
    assert embed_size(embed) <= EMBED_TOTAL_MAX


def test_a_headline_pinging_everyone_pings_no_one():
    payload = message_payload(record(title="@everyone Acme to the moon <@&123>"))
    assert payload["allowed_mentions"] == {"parse": []}
    assert plain_payload(record(title="@here"))["allowed_mentions"] == {"parse": []}


def test_a_link_discord_would_reject_is_left_out_not_sent():
    embed = message_payload(record(link="javascript:alert(1)"))["embeds"][0]
    assert "url" not in embed


def test_admin_event_embed():
    embed = admin_embed({"event": "give_up", "actor": "alert-0", "reason": "exit",
                         "message": "m" * 10_000, "level": "error", "at": time.time()})
    assert embed["title"] == "give_up: alert-0"
    assert embed["color"] == 0xE74C3C
    assert embed_size(embed) <= EMBED_TOTAL_MAX
    assert embed_problems({"embeds": [embed]}, set()) == {}
