"""Discord messages for alerts and admin events: one embed each, always within Discord's limits.

Discord rejects a whole message (400, code 50035) when any embed limit is passed, so every
text is clipped here, and a message over the 6000-character total loses description, then
fields, then title until it fits. Mentions are never parsed: a headline saying "@everyone"
must not ping a trading desk.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

# Discord's limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits)
TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FIELDS_MAX = 25
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024
FOOTER_MAX = 2048
AUTHOR_MAX = 256
EMBED_TOTAL_MAX = 6000  # title + description + field names and values + footer + author
CONTENT_MAX = 2000
URL_MAX = 2048
USERNAME_MAX = 80

CHART_FILENAME = "chart.png"
ELLIPSIS = "…"

POSITIVE_COLOR = 0x2ECC71
NEGATIVE_COLOR = 0xE74C3C
NEUTRAL_COLOR = 0x95A5A6
SENTIMENT_NEUTRAL_BAND = 0.15  # |sentiment| below this is shown as neutral
LEVEL_COLORS = {"error": 0xE74C3C, "warning": 0xF39C12, "info": 0x3498DB}

# category -> (badge, label); unknown categories get a plain tag.
CATEGORY_BADGES: dict[str, tuple[str, str]] = {
    "fda_approval": ("\U0001F48A", "FDA approval"),
    "clinical_results": ("\U0001F9EA", "Clinical results"),
    "merger_acquisition": ("\U0001F91D", "M&A"),
    "offering_dilution": ("\U0001F4B8", "Offering / dilution"),
    "earnings_guidance": ("\U0001F4CA", "Earnings / guidance"),
    "contract_partnership": ("\U0001F4DD", "Contract / partnership"),
    "uplisting": ("\U0001F53C", "Uplisting"),
    "going_concern": ("\u26A0\uFE0F", "Going concern"),
    "reverse_split": ("\U0001F500", "Reverse split"),
    "delisting_notice": ("\U0001F6A8", "Delisting notice"),
    "insider_or_activist": ("\U0001F575\uFE0F", "Insider / activist"),
    "bankruptcy": ("\U0001F6D1", "Bankruptcy"),
    "buyback_dividend": ("\U0001F4B0", "Buyback / dividend"),
    "other": ("\U0001F3F7\uFE0F", "Other"),
}


def clip(text: Any, limit: int) -> str:
    """text as a string of at most ``limit`` characters, an ellipsis marking a cut."""
    text = "" if text is None else str(text)
    if len(text) <= limit:
        return text
    return text[:max(0, limit - 1)] + ELLIPSIS if limit > 0 else ""


def badge(category: str) -> tuple[str, str]:
    return CATEGORY_BADGES.get(category, ("\U0001F3F7\uFE0F", category.replace("_", " ").title()))


def sentiment_color(sentiment: float) -> int:
    if sentiment >= SENTIMENT_NEUTRAL_BAND:
        return POSITIVE_COLOR
    if sentiment <= -SENTIMENT_NEUTRAL_BAND:
        return NEGATIVE_COLOR
    return NEUTRAL_COLOR


def _iso(ts: Any) -> str | None:
    try:
        return datetime.fromtimestamp(float(ts), timezone.utc).isoformat()
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _http_url(url: Any) -> str | None:
    """A link Discord accepts as an embed URL, or None (a bad URL fails the whole message)."""
    if not isinstance(url, str) or len(url) > URL_MAX:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def ticker_list(tickers: list[str], limit: int = FIELD_VALUE_MAX) -> str:
    """``$ABC $DEF`` within ``limit`` characters; the rest as ``+N more``."""
    shown: list[str] = []
    for i, t in enumerate(tickers):
        rest = len(tickers) - i - 1
        candidate = " ".join([*shown, f"${t}"])
        tail = f" +{rest} more" if rest else ""
        if len(candidate) + len(tail) > limit:
            return clip(" ".join(shown) + f" +{len(tickers) - i} more", limit)
        shown.append(f"${t}")
    return " ".join(shown)


def embed_size(embed: dict[str, Any]) -> int:
    """The characters Discord counts towards EMBED_TOTAL_MAX."""
    size = len(embed.get("title", "")) + len(embed.get("description", ""))
    size += sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", ()))
    size += len(embed.get("footer", {}).get("text", ""))
    size += len(embed.get("author", {}).get("name", ""))
    return size


def fit(embed: dict[str, Any]) -> dict[str, Any]:
    """Clips every part to its limit, then trims until the total fits, least useful first."""
    if "title" in embed:
        embed["title"] = clip(embed["title"], TITLE_MAX) or "(untitled)"
    if "description" in embed:
        embed["description"] = clip(embed["description"], DESCRIPTION_MAX)
    fields = [{**f, "name": clip(f["name"], FIELD_NAME_MAX) or "\u200b",
               "value": clip(f["value"], FIELD_VALUE_MAX) or "\u200b"}
              for f in embed.get("fields", ())][:FIELDS_MAX]
    if "fields" in embed:
        embed["fields"] = fields
    if "footer" in embed:
        embed["footer"]["text"] = clip(embed["footer"].get("text", ""), FOOTER_MAX)
    if "author" in embed:
        embed["author"]["name"] = clip(embed["author"].get("name", ""), AUTHOR_MAX)
    excess = embed_size(embed) - EMBED_TOTAL_MAX
    if excess > 0 and embed.get("description"):
        keep = max(0, len(embed["description"]) - excess)
        embed["description"] = clip(embed["description"], keep)
        excess = embed_size(embed) - EMBED_TOTAL_MAX
    while excess > 0 and embed.get("fields"):
        embed["fields"].pop()
        excess = embed_size(embed) - EMBED_TOTAL_MAX
    if excess > 0 and "footer" in embed:
        embed["footer"]["text"] = clip(embed["footer"]["text"],
                                       max(0, len(embed["footer"]["text"]) - excess))
        excess = embed_size(embed) - EMBED_TOTAL_MAX
    if excess > 0 and "title" in embed:
        embed["title"] = clip(embed["title"], max(1, len(embed["title"]) - excess))
    return embed


def _field(name: str, value: Any, inline: bool = True) -> dict[str, Any]:
    return {"name": name, "value": str(value), "inline": inline}


def alert_embed(record: dict[str, Any], *, with_chart: bool) -> dict[str, Any]:
    """The embed of one alert record (the JSONL alert shape)."""
    tickers = list(record.get("tickers") or [])
    category = str(record.get("category") or "other")
    icon, label = badge(category)
    sentiment = float(record.get("sentiment") or 0.0)
    score = float(record.get("score") or 0.0)
    badges = [f"{icon} **{label}**"]
    if record.get("form"):
        badges.append(f"\U0001F4C4 {record['form']}")
    if record.get("material") is False:
        badges.append("not material")
    summary = str(record.get("summary") or "").strip()
    description = " \u00b7 ".join(badges) + (f"\n\n{summary}" if summary else "")
    fields = []
    if tickers:
        fields.append(_field("Tickers", ticker_list(tickers)))
    if record.get("holder"):
        fields.append(_field("Holder", str(record["holder"])))
    fields.append(_field("Score", f"{score:.2f}"))
    fields.append(_field("Sentiment", f"{sentiment:+.2f}"))
    if record.get("published"):
        fields.append(_field("Published", f"<t:{int(float(record['published']))}:R>"))
    if record.get("keywords"):
        fields.append(_field("Keywords", ", ".join(map(str, record["keywords"])), inline=False))
    footer = str(record.get("source") or "")
    if record.get("provider"):
        footer += f" \u00b7 {record['provider']}"
    embed: dict[str, Any] = {
        "title": str(record.get("title") or ""), "description": description,
        "color": sentiment_color(sentiment), "fields": fields,
        "footer": {"text": footer or "catalyst"},
    }
    url = _http_url(record.get("link"))
    if url:
        embed["url"] = url
    stamp = _iso(record.get("published") or record.get("alerted_at"))
    if stamp:
        embed["timestamp"] = stamp
    if with_chart:
        embed["image"] = {"url": f"attachment://{CHART_FILENAME}"}
    return fit(embed)


def admin_embed(record: dict[str, Any]) -> dict[str, Any]:
    """The embed of one admin event (``event``, ``actor``, ``reason``, ``message``, ``at``)."""
    level = str(record.get("level") or "warning")
    fields = [_field("Actor", record.get("actor") or "-")]
    if record.get("reason"):
        fields.append(_field("Reason", record["reason"]))
    fields.append(_field("Level", level))
    embed: dict[str, Any] = {
        "title": f"{record.get('event', 'event')}: {record.get('actor', '')}".strip(": "),
        "description": str(record.get("message") or ""),
        "color": LEVEL_COLORS.get(level, LEVEL_COLORS["warning"]),
        "fields": fields, "footer": {"text": "catalyst-supervisor admin"},
    }
    stamp = _iso(record.get("at"))
    if stamp:
        embed["timestamp"] = stamp
    return fit(embed)


def message_payload(record: dict[str, Any], *, with_chart: bool = False,
                    username: str | None = None) -> dict[str, Any]:
    """The execute-webhook JSON body for an alert or (when it has ``event``) an admin event."""
    if "event" in record:
        embed, content = admin_embed(record), ""
    else:
        embed = alert_embed(record, with_chart=with_chart)
        tickers = list(record.get("tickers") or [])
        lead = " ".join(f"**${t}**" for t in tickers[:5])
        content = clip(f"{lead} {badge(str(record.get('category') or 'other'))[1]}".strip(),
                       CONTENT_MAX)
    payload: dict[str, Any] = {"embeds": [embed], "allowed_mentions": {"parse": []}}
    if content:
        payload["content"] = content
    if username:
        payload["username"] = clip(username, USERNAME_MAX)
    if with_chart:
        payload["attachments"] = [{"id": 0, "filename": CHART_FILENAME,
                                   "description": "price chart"}]
    return payload


def plain_payload(record: dict[str, Any], username: str | None = None) -> dict[str, Any]:
    """A minimal text message: what is sent when Discord rejects the embed (a 400)."""
    title = record.get("title") or record.get("event") or "alert"
    tickers = " ".join(f"${t}" for t in (record.get("tickers") or [])[:10])
    link = _http_url(record.get("link")) or ""
    text = clip(" ".join(p for p in (tickers, str(title), link) if p), CONTENT_MAX)
    payload: dict[str, Any] = {"content": text, "allowed_mentions": {"parse": []}}
    if username:
        payload["username"] = clip(username, USERNAME_MAX)
    return payload


def payload_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
