"""The [sentiment_agent] section of moonbus.toml (keys documented there)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from services.common.config import Section
from services.contract.models import SYMBOL_PATTERN, Symbol

# Words that tie a feed item to a symbol's base asset, unless [sentiment_agent.keywords] says otherwise.
KNOWN_NAMES: dict[str, list[str]] = {
    "BTC": ["bitcoin", "btc"],
    "ETH": ["ethereum", "ether", "eth"],
    "SOL": ["solana", "sol"],
}


class SentimentConfig(Section):
    headlines: str = "data/headlines.jsonl"  # "" = no replay
    interval_s: Annotated[float, Field(gt=0)] = 2.0
    half_life_s: Annotated[float, Field(gt=0)] = 600.0
    feeds: list[str] = []
    feed_poll_s: Annotated[float, Field(gt=0)] = 60.0
    feed_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    keywords: dict[Symbol, list[str]] = {}
    scorer: Literal["lexicon", "llm"] = "lexicon"
    llm_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0

    @field_validator("feeds")
    @classmethod
    def _http_urls(cls, feeds: list[str]) -> list[str]:
        bad = [f for f in feeds if not f.startswith(("http://", "https://"))]
        if bad:
            raise ValueError(f"feeds must be http(s) URLs: {bad}")
        return feeds

    @field_validator("keywords")
    @classmethod
    def _lower_case_words(cls, keywords: dict[str, list[str]]) -> dict[str, list[str]]:
        return {symbol: [w.lower() for w in words] for symbol, words in keywords.items()}


def keywords_for(cfg: SentimentConfig, symbols: list[str]) -> dict[str, list[str]]:
    """symbol -> words: the configured ones, else the base asset's known names (or its ticker)."""
    out = {}
    for symbol in symbols:
        if not re.fullmatch(SYMBOL_PATTERN, symbol):
            continue
        base = symbol.split("-")[0]
        out[symbol] = cfg.keywords.get(symbol) or KNOWN_NAMES.get(base, [base.lower()])
    out.update(cfg.keywords)
    return out
