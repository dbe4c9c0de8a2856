"""RSS and Atom feeds by URL: fetched with httpx (the whole answer within the timeout, at
most MAX_FEED_BYTES of it), parsed with feedparser, mapped to symbols by keywords, each entry
reported once.

An entry is tied to every symbol one of whose keywords is a word of its title or summary
("Bitcoin ETF inflows" -> BTC-USD). Entries about no known symbol are skipped. An entry is
known by its id (guid / atom:id), else its link, else its title; the last 5000 are kept
to skip them on the next poll.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlparse

import feedparser
import httpx

from .headlines import Headline
from .lexicon import tokens

SEEN_LIMIT = 5000
# A feed is a few hundred KB at most; a server sending more (or sending for ever) is refused
# rather than held in memory.
MAX_FEED_BYTES = 5 * 2**20
_tag = re.compile(r"<[^>]+>")


class FeedError(Exception):
    """The feed could not be fetched or is not RSS / Atom."""


@dataclass(frozen=True)
class FeedItem:
    key: str
    headline: Headline


def symbols_in(text: str, keywords: dict[str, list[str]]) -> list[str]:
    words = set(tokens(text))
    return [symbol for symbol, names in keywords.items() if words.intersection(names)]


def parse_feed(content: bytes, keywords: dict[str, list[str]]) -> list[FeedItem]:
    feed = feedparser.parse(content)
    if feed.bozo and not feed.entries:
        raise FeedError(f"not an RSS or Atom feed: {feed.get('bozo_exception')}")
    items = []
    for entry in feed.entries:
        title = " ".join(html.unescape(_tag.sub(" ", entry.get("title", ""))).split())[:1000]
        if not title:
            continue
        summary = html.unescape(_tag.sub(" ", entry.get("summary", "")))
        symbols = symbols_in(f"{title} {summary}", keywords)
        if symbols:
            key = entry.get("id") or entry.get("link") or title
            items.append(FeedItem(key, Headline(title=title, symbols=symbols)))
    return items


class FeedPoller:
    """One feed URL; `poll()` returns the entries not returned before."""

    def __init__(self, url: str, keywords: dict[str, list[str]], timeout_s: float, client: httpx.AsyncClient) -> None:
        self.url = url
        self.source = f"feed:{urlparse(url).netloc}"
        self.keywords = keywords
        self.timeout_s = timeout_s
        self.client = client
        self._seen: OrderedDict[str, None] = OrderedDict()

    async def poll(self) -> list[Headline]:
        try:
            # httpx's timeout is per read: a server trickling bytes would hold the poll for ever.
            async with asyncio.timeout(self.timeout_s):
                content = await self._fetch()
        except TimeoutError:
            raise FeedError(f"{self.url}: no whole answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as e:
            raise FeedError(f"{self.url}: {type(e).__name__}: {e}") from None
        items = await asyncio.to_thread(parse_feed, content, self.keywords)
        new = []
        for item in items:
            if item.key in self._seen:
                continue
            self._seen[item.key] = None
            new.append(item.headline)
        while len(self._seen) > SEEN_LIMIT:
            self._seen.popitem(last=False)
        return new

    async def _fetch(self) -> bytes:
        async with self.client.stream("GET", self.url, timeout=self.timeout_s, follow_redirects=True) as response:
            response.raise_for_status()
            body = bytearray()
            async for chunk in response.aiter_bytes():  # (decompressed: a small gzip bomb is counted whole)
                body += chunk
                if len(body) > MAX_FEED_BYTES:
                    raise FeedError(f"{self.url}: larger than {MAX_FEED_BYTES} bytes: refused")
            return bytes(body)
