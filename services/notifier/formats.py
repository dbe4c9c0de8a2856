"""A Notice as each kind of webhook wants it (pure).

- json: the notice and the bus message it came from, as one JSON object;
- discord: `{"content", "embeds", "allowed_mentions"}` of Discord's Execute Webhook, within
  its limits (content 2000, embed title 256, description 4096, 25 fields of 256/1024), and
  no mention ever pings anyone (`allowed_mentions.parse = []`: a rejection reason holding
  "@everyone" stays text);
- slack: `{"text", "blocks"}` of an incoming webhook (header 150, section 3000, 10 fields),
  `&`, `<`, `>` escaped so venue text cannot form `<!channel>` or a link;
- telegram: Bot API `sendMessage` parameters (`chat_id`, `text` of at most 4096, parse_mode
  HTML with the text escaped).
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from .events import Notice

DISCORD_COLOURS = {"info": 0x3498DB, "warning": 0xF1C40F, "critical": 0xE74C3C}
SLACK_ICONS = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}
TELEGRAM_ICONS = {"info": "\u2139\ufe0f", "warning": "\u26a0\ufe0f", "critical": "\U0001f6a8"}


def cut(text: str, limit: int) -> str:
    """At most `limit` characters; a cut text ends with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def iso_time(ts_ns: int) -> str | None:
    if ts_ns <= 0:
        return None
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_body(n: Notice) -> dict[str, Any]:
    return {"event": n.kind, "severity": n.severity, "title": n.title, "text": n.text, "symbol": n.symbol,
            "notional": None if n.notional is None else format(n.notional, "f"), "subject": n.subject,
            "fields": dict(n.fields), "ts": n.ts, "data": n.data}


def discord_body(n: Notice) -> dict[str, Any]:
    embed: dict[str, Any] = {
        "title": cut(n.title, 256),
        "description": cut(n.text, 4096),
        "color": DISCORD_COLOURS[n.severity],
        "fields": [{"name": cut(k, 256), "value": cut(v or "-", 1024), "inline": len(v) <= 40}
                   for k, v in n.fields[:25]],
        "footer": {"text": cut(f"moonbus {n.kind}" + (f" \u00b7 {n.subject}" if n.subject else ""), 2048)},
    }
    when = iso_time(n.ts)
    if when:
        embed["timestamp"] = when
    # Discord's limit on all of an embed's text together is 6000 characters.
    while sum(len(f["name"]) + len(f["value"]) for f in embed["fields"]) + len(embed["title"]) \
            + len(embed["description"]) + len(embed["footer"]["text"]) > 6000 and embed["fields"]:
        embed["fields"].pop()
    return {"content": cut(n.title, 2000), "embeds": [embed], "allowed_mentions": {"parse": []}}


def slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(n: Notice) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": cut(n.title, 150)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": cut(slack_escape(n.text) or "-", 3000)}},
    ]
    if n.fields:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": cut(f"*{slack_escape(k)}*\n{slack_escape(v)}", 2000)} for k, v in n.fields[:10]]})
    context = f"{SLACK_ICONS[n.severity]} moonbus {n.kind}" + (f" \u00b7 {n.subject}" if n.subject else "")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(slack_escape(context), 3000)}]})
    return {"text": cut(slack_escape(f"{n.title}: {n.text}"), 3000), "blocks": blocks}


def telegram_text(n: Notice) -> str:
    """HTML of at most 4096 characters: fields are dropped whole, then the text shortened,
    so a cut never falls inside a tag or an entity."""
    def esc(text: str) -> str:
        return html.escape(text, quote=False)

    head = f"{TELEGRAM_ICONS[n.severity]} <b>{esc(cut(n.title, 256))}</b>"
    fields = [f"<b>{esc(cut(k, 64))}</b>: {esc(cut(v, 300))}" for k, v in n.fields]
    limit = 1500
    while True:
        text = "\n".join([head, esc(cut(n.text, limit)), *fields])
        if len(text) <= 4096:
            return text
        if fields:
            fields.pop()
        else:
            limit //= 2


def telegram_body(n: Notice, chat_id: str) -> dict[str, Any]:
    return {"chat_id": chat_id, "text": telegram_text(n), "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": True}}
