"""LLM strategies in a backtest: through the record/replay cache of services/common/llm.

- `replay` (the default): every decision is read from the cache (`[llm] cache_dir`), never
  asked: free, and the same every time. A decision with no recorded answer is the model's
  outage as live: the agent's `llm_fallback` strategy decides, marked fallback.
- `record`: every decision asks the configured model and is saved in the cache, so the
  run can be replayed. It costs money: `estimate` says how much before it starts (the CLI
  asks to go on), and the result says what was spent (`llm_cost_usd`).

The prompts are the live agent's (decide.py build_prompt) with the backtest's bars, risk
verdict and account, so a replay finds the answers a recording run saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_UP, Decimal
from typing import Literal

from services.common.config import section
from services.common.llm.config import LLMConfig
from services.trading_agent.agent import Context, Event
from services.trading_agent.config import TradingConfig
from services.trading_agent.decide import SYSTEM_PROMPT, build_prompt

from .data import BarSeries

Mode = Literal["replay", "record"]
CHARS_PER_TOKEN = 4  # a rough rule for English and numbers; the estimate says so
MARGIN = Decimal("1.25")  # the prompt's risk and account lines are longer in the run than here


@dataclass(frozen=True)
class CostEstimate:
    decisions: int
    model: str
    input_tokens: int
    output_tokens: int  # at most: every answer at max_tokens
    usd: Decimal

    def text(self) -> str:
        return (f"recording asks {self.model} {self.decisions} times: about {self.input_tokens:,} input and at most "
                f"{self.output_tokens:,} output tokens, about ${self.usd} (~{CHARS_PER_TOKEN} characters a token, "
                f"every answer at max_tokens)")


def llm_settings(table: dict, mode: Mode) -> LLMConfig:
    """[llm] of the config with the cache in `mode`."""
    llm = dict(table.get("llm", {}))
    llm["cache_mode"] = mode
    return section({"llm": llm}, "llm", LLMConfig)


def estimate(series: list[BarSeries], cfg: TradingConfig, llm: LLMConfig) -> CostEstimate | None:
    """What recording a backtest of `series` would cost; None when no model is asked
    ([llm] provider offline: the fallback strategy decides, free)."""
    if llm.provider == "offline" or not series:
        return None
    endpoint = llm.endpoints[llm.provider]
    price = llm.prices[endpoint.model]
    s = max(series, key=len)
    bars = [s.bar(i) for i in range(min(cfg.llm_bars, len(s)))]
    last = bars[-1]
    event = Event(kind="bar", symbol=s.symbol, venue=s.venue, price=last.close, origin_ts=last.end_ts,
                  summary=f"bar {s.interval} closed")
    chars = len(SYSTEM_PROMPT) + len(build_prompt(Context(event=event, bars=bars), cfg.llm_bars))
    decisions = sum(len(x) for x in series)  # the model is asked at every bar's close
    input_tokens = int(decisions * Decimal(chars) / CHARS_PER_TOKEN * MARGIN)
    output_tokens = decisions * endpoint.max_tokens
    usd = (input_tokens * price.input + output_tokens * price.output) / 1_000_000
    return CostEstimate(decisions, endpoint.model, input_tokens, output_tokens,
                        usd.quantize(Decimal("0.01"), rounding=ROUND_UP))
