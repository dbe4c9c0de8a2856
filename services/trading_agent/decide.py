"""Deciders: a deterministic strategy (a plugin, plugin.py), or an LLM that falls back to one.

A plugin is asked within a deadline (plugin_timeout_ms): a sync one in a daemon thread, an
async one under asyncio.wait_for; the built-ins (pure, microseconds) in the loop. One that
raises, overruns or answers something that is not a Choice abstains: HOLD, the reasoning
`plugin_error: ...` / `plugin_timeout: ...`, and `Choice.failure` set, which the service
reports on errors.trading-agent and counts (moonbus_trading_plugin_failures_total).

The LLM strategy asks the [llm] provider with a prompt of the recent bars, the latest
sentiment, the position and the risk verdict, and gets a schema-checked answer. When the
model cannot answer (outage, timeout, budget spent, refusal, unparsable output) the
deterministic `llm_fallback` strategy decides instead, marked fallback=True. The call has
a deadline (llm_timeout_s), so a slow model delays one decision, never the bar path.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol, cast

from services.common.llm import Decision, DecisionRequest, Provider
from services.contract.models import Action

from .agent import AGENT, Choice, Context
from .config import TradingConfig
from .plugin import Choice as PluginChoice
from .plugin import StrategyContext, StrategyPlugin
from .strategy import Decision as StrategyDecision
from .strategy import Strategy

SYSTEM_PROMPT = (
    "You are the trading agent of an automated trading system. For one symbol you get the "
    "recent closed bars, the latest news sentiment, the position, the risk verdict and the "
    "account. Decide BUY (open or add to a long), SELL (reduce the long; there is no shorting) "
    "or HOLD, with a confidence from 0 to 1 and a short reasoning that cites the data. Answer "
    "ABSTAIN when the data is not enough. Risk limits are enforced elsewhere: under a "
    "REDUCE_ONLY or HALTED verdict a BUY that adds to the position is not sent."
)


class Decider(Protocol):
    name: str
    bars_needed: int
    uses_sentiment: bool

    async def decide(self, ctx: Context) -> Choice: ...


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


IDLE_THREAD_S = 30.0  # a plugin's thread idle this long ends (a backtest's, a replaced decider's)


class _Threads:
    """A plugin's own daemon threads, started as needed, at most `limit`: a thread cannot be
    killed, so one stuck in a runaway call stays busy (and daemon: it cannot keep the process
    from exiting); with `limit` of them stuck, `submit` refuses at once."""

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit = name, limit
        self.busy = 0  # jobs submitted and not finished
        self.started = 0
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def submit(self, job: Callable[[], None]) -> bool:
        with self._lock:
            if self.busy >= self.limit:
                return False
            self.busy += 1
            if self.busy > self.started:  # no thread free for it
                self.started += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self.started}", daemon=True).start()
        self._jobs.put(job)
        return True

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=IDLE_THREAD_S)
            except queue.Empty:
                with self._lock:
                    if self.busy < self.started:  # the other threads are enough for the jobs submitted
                        self.started -= 1
                        return
                continue
            try:
                job()
            finally:
                with self._lock:
                    self.busy -= 1


class _PluginRaised(Exception):
    """What a plugin raised (kept apart from the deadline's TimeoutError)."""


def strategy_context(ctx: Context, shorts: Callable[[str], bool] | None = None) -> StrategyContext:
    e, v = ctx.event, ctx.verdict
    return StrategyContext(symbol=e.symbol, venue=e.venue, kind=e.kind, bars=ctx.bars, price=ctx.price,
                           position=v.position if v is not None else None, verdict=v, account=ctx.account,
                           allow_short=shorts(e.symbol) if shorts is not None else False)


def _short(text: str, limit: int = 300) -> str:
    """A plugin's text in a Signal's reasoning: bounded."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _not_a_choice(answer: object) -> str | None:
    """Why a plugin's answer cannot be used (None: it can)."""
    if not isinstance(answer, PluginChoice):
        return "not a Choice"
    if not isinstance(answer.action, Action):
        return "its action is not an Action"
    c = answer.confidence
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c <= 1.0:
        return "its confidence is not a number in [0, 1]"
    if not isinstance(answer.reasoning, str):
        return "its reasoning is not a string"
    return None


class RuleDecider:
    """A deterministic strategy as a Decider: a plugin (on_bar / on_alert within the
    deadline), or any object with `decide(symbol, bars)` (the Strategy protocol)."""

    uses_sentiment = False

    def __init__(self, strategy: Strategy | StrategyPlugin, timeout_s: float = 0.25, max_running: int = 8,
                 shorts: Callable[[str], bool] | None = None) -> None:
        self.strategy = strategy
        self.shorts = shorts  # whether a symbol may go short (TradingConfig.shorts), told to plugins
        self.name = strategy.name
        self.bars_needed = strategy.bars_needed
        self.timeout_s = timeout_s
        self._threads = _Threads(f"strategy-{self.name}", max_running)
        plugin = strategy if isinstance(strategy, StrategyPlugin) else None
        self.plugin = plugin
        self.is_async = plugin is not None and inspect.iscoroutinefunction(plugin.on_bar)

    @property
    def fast_path(self) -> bool:
        """Whether a backtest may decide every bar from the closes alone, up front: the
        plugin offers `scan`, or it is a plain Strategy (prices only). Any other plugin is
        asked at each bar's close with the context of that moment, as live."""
        return self.plugin is None or callable(getattr(self.strategy, "scan", None))

    async def decide(self, ctx: Context) -> Choice:
        start = time.perf_counter()
        if self.plugin is None:
            d = self.strategy.decide(ctx.event.symbol, ctx.bars)  # type: ignore[union-attr]
            return self.choice(d, ctx.notes, _ms_since(start))
        plugin = self.plugin
        handler = plugin.on_alert if ctx.event.kind == "alert" else plugin.on_bar
        failure: str | None = None
        why = ""
        try:
            answer = await self._ask(handler, strategy_context(ctx, self.shorts))
            if wrong := _not_a_choice(answer):
                failure, why = "plugin_error", f"plugin_error: {self.name} returned {_short(repr(answer))}: {wrong}"
        except _PluginRaised as e:
            cause = e.args[0]
            failure = "plugin_error"
            why = f"plugin_error: {self.name} raised {type(cause).__name__}: {_short(str(cause))}"
        except TimeoutError:
            failure = "plugin_timeout"
            why = f"plugin_timeout: {self.name} gave no answer within {self.timeout_s * 1000:g} ms"
        if failure is not None:
            reasoning = why + "".join(f"; {note}" for note in ctx.notes)
            return Choice(Action.HOLD, 0.0, reasoning, self.name, latency_ms=_ms_since(start), failure=failure)
        return self.choice(cast(PluginChoice, answer), ctx.notes, _ms_since(start))

    async def _ask(self, handler: Callable[[StrategyContext], object], sctx: StrategyContext) -> object:
        if self.plugin is not None and self.plugin.inline:
            try:
                return handler(sctx)
            except Exception as e:  # whatever a plugin raises, it abstains
                raise _PluginRaised(e) from e
        if self.is_async:
            async def guarded() -> object:
                try:
                    return await handler(sctx)  # type: ignore[misc]
                except Exception as e:  # whatever a plugin raises, it abstains
                    raise _PluginRaised(e) from e
            return await asyncio.wait_for(guarded(), self.timeout_s)
        return await asyncio.wait_for(self._in_thread(handler, sctx), self.timeout_s)

    @property
    def running(self) -> int:
        """Calls of this plugin now in its threads (stuck ones included)."""
        return self._threads.busy

    def _in_thread(self, handler: Callable[[StrategyContext], object], sctx: StrategyContext) -> asyncio.Future[object]:
        """The handler in one of the plugin's threads; its answer comes back through the
        returned future (which the deadline may have cancelled by then)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()

        def settle(ok: bool, value: object) -> None:
            if future.done():  # the deadline passed: nobody waits for it any more
                return
            if ok:
                future.set_result(value)
            else:
                future.set_exception(_PluginRaised(value))

        def job() -> None:
            ok, value = True, None
            try:
                value = handler(sctx)
            except Exception as e:  # noqa: BLE001 - whatever a plugin raises, it abstains
                ok, value = False, e
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                loop.call_soon_threadsafe(settle, ok, value)

        if not self._threads.submit(job):
            future.set_exception(TimeoutError())  # all its threads are stuck: abstain at once
        return future

    def choice(self, d: StrategyDecision, notes: Sequence[str] = (), latency_ms: float = 0.0) -> Choice:
        """The strategy's decision as the agent's choice (a backtest asks the strategy
        itself, on every bar, and makes a choice of the decisions that are not HOLD)."""
        reasoning = d.reasoning + "".join(f"; {note}" for note in notes)
        return Choice(d.action, d.confidence, reasoning, self.name, latency_ms=latency_ms)


class LLMDecider:
    uses_sentiment = True

    def __init__(self, provider: Provider, fallback: Strategy, cfg: TradingConfig) -> None:
        self.provider = provider
        self.fallback = fallback
        self.cfg = cfg
        self.name = f"llm:{provider.name}"
        self.bars_needed = max(cfg.llm_bars, fallback.bars_needed)

    async def decide(self, ctx: Context) -> Choice:
        start = time.perf_counter()
        request = DecisionRequest(agent=AGENT, symbol=ctx.event.symbol, system=SYSTEM_PROMPT,
                                  prompt=build_prompt(ctx, self.cfg.llm_bars, self.cfg.shorts(ctx.event.symbol)),
                                  timeout_s=self.cfg.llm_timeout_s)
        decision: Decision | None = None
        try:
            # The provider keeps its own deadline; this one only guards against a provider that does not.
            decision = await asyncio.wait_for(self.provider.decide(request), self.cfg.llm_timeout_s + 1.0)
            failure = decision.error if decision.error or decision.fallback else None
        except TimeoutError:
            failure = f"no answer within {self.cfg.llm_timeout_s}s"
        except Exception as e:  # a provider must not raise; if it does, the bar is still decided
            failure = f"provider failed: {e!r}"
        cost = decision.cost_usd if decision else 0.0
        if failure is None and decision is not None:
            if decision.action == "ABSTAIN":  # the model's own choice: no trade
                return Choice(Action.HOLD, decision.confidence, f"the model abstained: {decision.reasoning}",
                              decision.model, latency_ms=decision.latency_ms, cost_usd=cost)
            return Choice(Action(decision.action), decision.confidence, decision.reasoning, decision.model,
                          latency_ms=decision.latency_ms, cost_usd=cost)
        d = self.fallback.decide(ctx.event.symbol, ctx.bars)
        reasoning = f"LLM {self.provider.name} unavailable ({failure}); {self.fallback.name}: {d.reasoning}"
        return Choice(d.action, d.confidence, reasoning, self.fallback.name, fallback=True,
                      latency_ms=_ms_since(start), cost_usd=cost)


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_prompt(ctx: Context, bars: int, shorts: bool = False) -> str:
    e = ctx.event
    lines = [f"Symbol: {e.symbol} (venue {e.venue})", f"Event: {e.summary}", f"Last price: {ctx.price}", "",
             f"Last {min(bars, len(ctx.bars))} closed bars (oldest first): start (UTC), open, high, low, close, volume"]
    lines += [f"{_iso(b.start_ts)}, {b.open}, {b.high}, {b.low}, {b.close}, {b.volume}" for b in ctx.bars[-bars:]]
    if not ctx.bars:
        lines.append("(none)")
    s = ctx.sentiment
    lines += ["", "Sentiment: " + (f"score {s.score:+.3f} in [-1, 1], confidence {s.confidence:.2f}, "
                                   f"{s.items} items, model {s.model}, at {_iso(s.ts)}" if s else "unknown")]
    v = ctx.verdict
    lines.append("Risk verdict: " + (f"{v.state.value}, position {v.position}"
                                     + (f", reasons: {'; '.join(v.reasons)}" if v.reasons else "") if v else "unknown"))
    a = ctx.account
    lines.append("Account: " + (f"{a.state.value}, equity {a.equity}, cash {a.cash}, day PnL {a.day_pnl}, "
                                f"drawdown {a.drawdown_pct:.2f}%" if a else "unknown"))
    lines += [f"Missing data: {note}" for note in ctx.notes]
    if shorts:  # the system prompt says long only; this symbol may go short (allow_short)
        lines.append("Shorts are allowed for this symbol: SELL when flat opens a short, SELL of a long closes "
                     "it and opens a short, BUY covers a short (and opens a long).")
    lines += ["", f"Question: BUY, SELL or HOLD {e.symbol} now?"]
    return "\n".join(lines)
