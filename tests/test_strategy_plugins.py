"""Strategy plugins (services/trading_agent/plugin.py, registry.py): discovery from a
strategies folder and from an installed package's entry point, name clashes, per-symbol
strategy and params, bad params at start, plugins that raise or overrun abstaining
visibly (Signal, errors.trading-agent, metric) while the agent goes on, the built-ins
unchanged as plugins, and one plugin deciding the same bars the same way in the
backtester and in the live agent (real nats-server)."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import pytest

from services.backtest import engine, presets
from services.backtest.data import BarSeries
from services.backtest.result import BacktestResult
from services.common.bus import flush
from services.common.config import REPO_ROOT, load
from services.contract.models import AccountState, Action, Bar, Signal, TradingState, Verdict, decode, encode, now_ns
from services.trading_agent import metrics, service
from services.trading_agent.agent import Context, Event
from services.trading_agent.config import TradingConfig
from services.trading_agent.decide import RuleDecider
from services.trading_agent.registry import StrategyLoadError, discover
from services.trading_agent.strategy import MeanReversionStrategy, MomentumStrategy, MovingAverageCrossover

D = Decimal
BUY, SELL, HOLD = Action.BUY, Action.SELL, Action.HOLD
T0 = 1_764_000_000 * 10**9
SECOND = 10**9
EXAMPLE = REPO_ROOT / "examples" / "strategies" / "breakout.py"


def bar(symbol: str, close: str | Decimal, i: int, high: Decimal | None = None, low: Decimal | None = None) -> Bar:
    c = D(close)
    return Bar(venue="sim", symbol=symbol, interval="1s", open=c, high=high or c, low=low or c, close=c, volume=D(1),
               trades=1, start_ts=T0 + i * SECOND, end_ts=T0 + (i + 1) * SECOND)


def walk(n: int, seed: int = 7) -> list[Decimal]:
    rng, price, out = random.Random(seed), D("100"), []
    for _ in range(n):
        price = max(D("1"), price + D(rng.choice([-3, -2, -1, 0, 1, 2, 3])) / 10)
        out.append(price)
    return out


def ctx_for(symbol: str, bars: list[Bar], kind: str = "bar", position: str | None = None) -> Context:
    b = bars[-1]
    event = Event(kind, symbol, "sim", b.close, b.end_ts, "test")
    ctx = Context(event=event, bars=bars)
    if position is not None:
        ctx.verdict = Verdict(symbol=symbol, state=TradingState.ACTIVE, position=D(position), ts=now_ns())
    return ctx


def write(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


PLUGIN_FILE = """
    from pydantic import BaseModel, Field
    from services.trading_agent.plugin import Action, Choice, StrategyPlugin
    from services.trading_agent.strategy import MomentumStrategy  # imported, not defined here: not a plugin of this file

    class Params(BaseModel):
        level: int = Field(100, ge=1)

    class Above(StrategyPlugin):
        name = "above"
        Params = Params

        def on_bar(self, ctx):
            if ctx.bars[-1].close > self.params.level:
                return Choice(Action.BUY, 0.7, f"{ctx.symbol} above {self.params.level} (position {ctx.position})")
            return Choice(Action.HOLD, 0.1, "below")
"""


# ---------------------------------------------------------------- discovery


def test_plugins_are_found_in_the_strategies_folder(tmp_path: Path) -> None:
    folder = tmp_path / "strategies"
    path = write(folder, "above.py", PLUGIN_FILE)
    write(folder, "_helpers.py", "raise RuntimeError('files starting with _ are not loaded')\n")
    registry = discover(folder, entry_points=[])
    assert {"momentum", "mean_reversion", "ma_crossover", "above"} == set(registry)
    assert registry["above"].origin == f"file {path}" and registry["momentum"].origin == "built-in"
    # ... and the configured one is used, params validated and passed in, the context filled in
    cfg = TradingConfig(strategy="above", strategies_dir=str(folder), params={"level": 50})
    decider = service.make_decider(cfg, {})
    choice = asyncio.run(decider.decide(ctx_for("BTC-USD", [bar("BTC-USD", "60", 0)], position="0.5")))
    assert (choice.action, choice.confidence, choice.model) == (BUY, 0.7, "above")
    assert choice.reasoning == "BTC-USD above 50 (position 0.5)"


def test_a_missing_configured_folder_and_a_broken_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(StrategyLoadError, match="strategies_dir .*nope.*no such folder"):
        discover(tmp_path / "nope", entry_points=[])
    assert set(discover("strategies", entry_points=[])) >= {"momentum"}  # the default may be absent
    write(tmp_path / "s", "broken.py", "import no_such_module_anywhere\n")
    with pytest.raises(StrategyLoadError, match=r"broken\.py: ModuleNotFoundError"):
        discover(tmp_path / "s", entry_points=[])


def make_dist(root: Path, dist: str, entry: str, module: str, body: str) -> None:
    """A throwaway installed distribution: a module and its .dist-info with entry_points.txt."""
    write(root, f"{module}.py", body)
    info = root / f"{dist}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[moonbus.strategies]\n{entry}\n")


def test_plugins_are_found_through_the_entry_point_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dist(tmp_path / "site", "moonbus_above_plugin", "above = mb_above_plugin:Above", "mb_above_plugin",
              PLUGIN_FILE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    registry = discover(None)
    assert registry["above"].origin == ("entry point moonbus.strategies: above = mb_above_plugin:Above "
                                        "(moonbus_above_plugin 1.2.3)")
    built = service.make_decider(TradingConfig(strategy="above", strategies_dir=str(tmp_path)), {})
    assert built.name == "above" and built.strategy.params.level == 100  # type: ignore[attr-defined]
    # the same name from a strategies folder: an error naming both origins
    folder = tmp_path / "strategies"
    path = write(folder, "above.py", PLUGIN_FILE)
    with pytest.raises(StrategyLoadError) as e:
        discover(folder)
    assert f"file {path}" in str(e.value) and "entry point moonbus.strategies: above" in str(e.value)


def test_a_plugin_named_like_a_builtin_is_an_error_naming_both(tmp_path: Path) -> None:
    path = write(tmp_path, "mine.py", PLUGIN_FILE.replace('name = "above"', 'name = "momentum"'))
    with pytest.raises(StrategyLoadError) as e:
        discover(tmp_path, entry_points=[])
    assert str(e.value) == f"strategy name 'momentum' clashes: built-in and file {path}"
    write(tmp_path, "mine.py", PLUGIN_FILE.replace('name = "above"', 'name = "llm"'))
    with pytest.raises(StrategyLoadError, match="other than llm"):
        discover(tmp_path, entry_points=[])


# ---------------------------------------------------------------- config per symbol


def test_each_symbol_gets_its_strategy_and_params(tmp_path: Path) -> None:
    write(tmp_path, "above.py", PLUGIN_FILE)
    cfg = TradingConfig(strategy="momentum", momentum_lookback=7, strategies_dir=str(tmp_path), symbols={
        "BTC-USD": {"strategy": "ma_crossover", "params": {"fast": 3, "slow": 9}},
        "eth-usd": {"params": {"lookback": 4}},  # the global strategy, its params overridden (case-insensitive)
        "SOL-USDC": {"strategy": "above", "params": {"level": 20}},
    })
    deciders = service.make_deciders(cfg, {})
    btc, eth, sol, other = (deciders.for_symbol(s) for s in ("BTC-USD", "ETH-USD", "SOL-USDC", "DOGE-USD"))
    assert (btc.name, btc.strategy.fast, btc.strategy.slow, btc.strategy.min_gap) == (  # type: ignore[attr-defined]
        "ma_crossover", 3, 9, D("0.01"))  # min_gap_pct from the global ma_min_gap_pct
    assert (eth.name, eth.bars_needed, eth.strategy.threshold_pct) == ("momentum", 4, 0.05)  # type: ignore[attr-defined]
    assert (sol.name, sol.strategy.params.level) == ("above", 20)  # type: ignore[attr-defined]
    assert (other.name, other.bars_needed) == ("momentum", 7) and other is deciders.default


def test_per_symbol_tables_from_the_config_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "moonbus.toml"
    path.write_text(textwrap.dedent("""
        [trading_agent]
        strategy = "mean_reversion"
        [trading_agent.symbols."BTC-USD"]
        strategy = "ma_crossover"
        params = { fast = 5, slow = 20 }
    """))
    table = load(path, {"MOONBUS__TRADING_AGENT__SYMBOLS__ETH-USD__STRATEGY": "momentum",
                        "MOONBUS__TRADING_AGENT__SYMBOLS__ETH-USD__PARAMS__LOOKBACK": "3"})
    cfg = TradingConfig.model_validate(table["trading_agent"])
    deciders = service.make_deciders(cfg, table)
    assert [(deciders.for_symbol(s).name, deciders.for_symbol(s).bars_needed) for s in ("BTC-USD", "ETH-USD", "X")] \
        == [("ma_crossover", 21), ("momentum", 3), ("mean_reversion", 20)]


@pytest.mark.parametrize(("table", "message"), [
    ({"strategy": "ma_crossover", "params": {"fast": 20, "slow": 5}},
     ("[trading_agent.symbols.\"BTC-USD\"] params of strategy 'ma_crossover' (built-in): "
      "fast (20) must be below slow (5)")),
    ({"strategy": "ma_crossover", "params": {"fsat": 3}},
     ("[trading_agent.symbols.\"BTC-USD\"] params.fsat of strategy 'ma_crossover' (built-in): unknown param "
      "(strategy ma_crossover takes fast, min_gap_pct, slow)")),
    ({"params": {"lookback": "many"}},
     ("[trading_agent.symbols.\"BTC-USD\"] params.lookback of strategy 'momentum' (built-in): "
      "Input should be a valid integer, unable to parse string as an integer (got 'many')")),
    ({"params": {"lookback": 1}}, ("params.lookback of strategy 'momentum' (built-in): Input should be greater "
                                   "than or equal to 2 (got 1)")),
    ({"strategy": "nosuch"}, ("[trading_agent.symbols.\"BTC-USD\"] strategy 'nosuch': no such strategy (known: "
                              "llm, ma_crossover, mean_reversion, momentum)")),
])
async def test_bad_params_stop_the_agent_at_start_naming_symbol_and_key(table: dict, message: str) -> None:
    config = {"trading_agent": {"strategy": "momentum", "symbols": {"BTC-USD": table}}}
    with pytest.raises(StrategyLoadError) as e:
        await asyncio.wait_for(service.main(asyncio.Event(), config=config), 5)  # before it connects anywhere
    assert message in str(e.value)


def test_global_params_and_typed_dataclass_params(tmp_path: Path) -> None:
    write(tmp_path, "dc.py", """
        from dataclasses import dataclass
        from services.trading_agent.plugin import Action, Choice, StrategyPlugin

        @dataclass(frozen=True)
        class Knobs:
            n: int = 2
            label: str = "x"

        class Dc(StrategyPlugin):
            name = "dc"
            Params = Knobs

            def on_bar(self, ctx):
                return Choice(Action.HOLD, 0.0, f"{self.params.label} {self.params.n}")
    """)
    d = service.make_decider(TradingConfig(strategy="dc", strategies_dir=str(tmp_path), params={"n": "5"}), {})
    assert d.strategy.params.n == 5  # type: ignore[attr-defined]
    with pytest.raises(StrategyLoadError, match=r"^\[trading_agent\] params.n of strategy 'dc'"):
        service.make_decider(TradingConfig(strategy="dc", strategies_dir=str(tmp_path), params={"n": "five"}), {})
    with pytest.raises(StrategyLoadError, match=r"params.m of strategy 'dc' .*unknown param .*takes label, n"):
        service.make_decider(TradingConfig(strategy="dc", strategies_dir=str(tmp_path), params={"m": 1}), {})


# ---------------------------------------------------------------- the built-ins, unchanged


@pytest.mark.parametrize(("name", "old"), [
    ("momentum", MomentumStrategy(20, 0.05)),
    ("mean_reversion", MeanReversionStrategy(20, 0.1)),
    ("ma_crossover", MovingAverageCrossover(5, 20, 0.01)),
])
async def test_builtins_decide_as_before_as_plugins(name: str, old) -> None:
    """The built-in as the agent builds it from the global keys (the defaults) and through
    per-symbol params decides every bar exactly as the old constructor's decide, live
    (on_bar) and in the backtester's one-pass scan."""
    closes = walk(300)
    bars = [bar("BTC-USD", c, i) for i, c in enumerate(closes)]
    cfg = TradingConfig(strategy=name)
    per_symbol = {"momentum": {"lookback": 20}, "mean_reversion": {"stretch_pct": 0.1},
                  "ma_crossover": {"fast": 5, "slow": 20}}[name]
    via_params = service.make_decider(TradingConfig(strategy="momentum", symbols={
        "BTC-USD": {"strategy": name, "params": per_symbol}}), {}, "BTC-USD")
    for decider in (service.make_decider(cfg, {}), via_params):
        assert (decider.name, decider.bars_needed) == (name, old.bars_needed)
        scanned = dict(decider.strategy.scan("BTC-USD", closes, holds=True))  # type: ignore[attr-defined]
        acted = 0
        for i in range(len(bars)):
            window = bars[max(0, i + 1 - old.bars_needed): i + 1]
            want = old.decide("BTC-USD", window)
            got = await decider.decide(ctx_for("BTC-USD", window))
            assert (got.action, got.confidence, got.reasoning, got.failure) == (
                want.action, want.confidence, want.reasoning, None)
            if i in scanned:
                assert scanned[i] == want
            acted += want.action is not HOLD
        assert acted > 0


# ---------------------------------------------------------------- plugins that fail abstain


MISBEHAVING = """
    import asyncio
    import time
    from services.trading_agent.plugin import Action, Choice, StrategyPlugin

    class Boom(StrategyPlugin):
        name = "boom"

        def on_bar(self, ctx):
            raise RuntimeError(f"no data for {ctx.symbol}")

    class Sleepy(StrategyPlugin):
        name = "sleepy"

        def on_bar(self, ctx):
            time.sleep(1.5)
            return Choice(Action.BUY, 1.0, "too late")

    class SleepyAsync(StrategyPlugin):
        name = "sleepy_async"

        async def on_bar(self, ctx):
            await asyncio.sleep(1.5)
            return Choice(Action.BUY, 1.0, "too late")

    class Wrong(StrategyPlugin):
        name = "wrong"

        def on_bar(self, ctx):
            return "BUY"

    class Alerted(StrategyPlugin):
        name = "alerted"

        async def on_bar(self, ctx):
            return Choice(Action.HOLD, 0.2, "a bar")

        async def on_alert(self, ctx):
            return Choice(Action.SELL, 0.9, f"an alert at {ctx.price}")
"""


async def test_raising_slow_and_wrong_plugins_abstain_within_the_deadline(tmp_path: Path) -> None:
    write(tmp_path, "bad.py", MISBEHAVING)
    cfg = TradingConfig(strategy="boom", strategies_dir=str(tmp_path), plugin_timeout_ms=100, workers=2,
                        symbols={"B-USD": {"strategy": "sleepy"}, "C-USD": {"strategy": "sleepy_async"},
                                 "D-USD": {"strategy": "wrong"}, "E-USD": {"strategy": "alerted"}})
    deciders = service.make_deciders(cfg, {})
    bars = [bar("A-USD", "100", 0)]
    boom = await deciders.for_symbol("A-USD").decide(ctx_for("A-USD", bars))
    assert (boom.action, boom.failure, boom.model) == (HOLD, "plugin_error", "boom")
    assert boom.reasoning == "plugin_error: boom raised RuntimeError: no data for A-USD"
    for symbol, name in (("B-USD", "sleepy"), ("C-USD", "sleepy_async")):
        started = time.perf_counter()
        slow = await deciders.for_symbol(symbol).decide(ctx_for(symbol, bars))
        assert time.perf_counter() - started < 1.0  # the deadline, not the plugin, ended it
        assert (slow.action, slow.failure) == (HOLD, "plugin_timeout")
        assert slow.reasoning == f"plugin_timeout: {name} gave no answer within 100 ms"
    wrong = await deciders.for_symbol("D-USD").decide(ctx_for("D-USD", bars))
    assert (wrong.action, wrong.failure, wrong.reasoning) == (HOLD, "plugin_error",
                                                              "plugin_error: wrong returned 'BUY': not a Choice")
    alerted = deciders.for_symbol("E-USD")
    on_bar = await alerted.decide(ctx_for("E-USD", bars, "bar"))
    on_alert = await alerted.decide(ctx_for("E-USD", bars, "alert"))
    assert (on_bar.action, on_alert.action, on_alert.reasoning) == (HOLD, SELL, "an alert at 100")


async def test_stuck_threads_are_capped_then_the_plugin_abstains_at_once(tmp_path: Path) -> None:
    write(tmp_path, "bad.py", MISBEHAVING)
    sleepy = discover(tmp_path, entry_points=[])["sleepy"].cls()
    decider = RuleDecider(sleepy, timeout_s=0.05, max_running=2)
    ctx = ctx_for("B-USD", [bar("B-USD", "1", 0)])
    for _ in range(2):  # each leaves a thread sleeping past its deadline
        assert (await decider.decide(ctx)).failure == "plugin_timeout"
    assert decider.running == 2
    started = time.perf_counter()
    assert (await decider.decide(ctx)).failure == "plugin_timeout"
    assert time.perf_counter() - started < 0.04  # no third thread: abstained without waiting
    await asyncio.sleep(1.6)
    assert decider.running == 0  # the stuck ones finished and were let go


class FakeMarket:
    """market-data stand-in: publishes closed bars and answers md.api.history with them."""

    def __init__(self, nc) -> None:
        self.nc, self.bars = nc, {}

    async def start(self) -> FakeMarket:
        self.sub = await self.nc.subscribe("md.api.history", cb=self._history)
        return self

    async def _history(self, msg) -> None:
        request = json.loads(msg.data)
        have = self.bars.get(request["symbol"], [])[-request["limit"]:]
        await msg.respond(json.dumps({"bars": [json.loads(encode(b)) for b in have]}).encode())

    async def publish(self, b: Bar) -> None:
        self.bars.setdefault(b.symbol, []).append(b)
        await self.nc.publish(f"md.bar.{b.interval}.{b.venue}.{b.symbol}", encode(b))


async def allow_trading(risk, *symbols: str) -> None:
    for symbol in symbols:
        await risk.publish(f"risk.verdict.{symbol}", encode(Verdict(symbol=symbol, state=TradingState.ACTIVE,
                                                                    position=D(0), ts=now_ns())))
    account = AccountState(state=TradingState.ACTIVE, cash=D(10000), equity=D(10000), peak_equity=D(10000),
                           drawdown_pct=0.0, realized_pnl=D(0), unrealized_pnl=D(0), day_pnl=D(0), fees=D(0),
                           gross_exposure=D(0), open_positions=0, kill_switch=False, ts=now_ns())
    await risk.publish("risk.account", encode(account))
    await flush(risk)
    await asyncio.sleep(0.1)


async def next_signal(queue: asyncio.Queue, timeout: float = 5.0) -> Signal:
    return decode(Signal, (await asyncio.wait_for(queue.get(), timeout)).data)


async def test_the_live_agent_reports_failing_plugins_and_keeps_deciding(tmp_path: Path, connect,
                                                                         running_service) -> None:
    write(tmp_path, "bad.py", MISBEHAVING)
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    boom, slow, fine = "PLGA-USD", "PLGB-USD", "PLGC-USD"
    config = {"trading_agent": {"strategy": "momentum", "momentum_lookback": 2, "momentum_threshold_pct": 0.5,
                                "strategies_dir": str(tmp_path), "plugin_timeout_ms": 100, "workers": 2,
                                "symbols": {boom: {"strategy": "boom"}, slow: {"strategy": "sleepy"}}}}
    errors_before = metrics.PLUGIN_FAILURES.labels("boom", "plugin_error")._value.get()
    timeouts_before = metrics.PLUGIN_FAILURES.labels("sleepy", "plugin_timeout")._value.get()
    market = await FakeMarket(md).start()
    signals = await operator.collect("agent.signal.trading.*")
    errors = await operator.collect("errors.trading-agent")
    try:
        async with running_service("trading-agent", service.main, config, operator):
            await allow_trading(risk, boom, slow, fine)
            got: dict[str, Signal] = {}
            for i, (symbol, close) in enumerate([(boom, "100"), (slow, "100"), (fine, "100"), (fine, "102")]):
                await market.publish(bar(symbol, close, i))
                s = await next_signal(signals)
                got[f"{symbol}#{i}"] = s
            reports = [json.loads((await asyncio.wait_for(errors.get(), 5)).data) for _ in range(2)]
    finally:
        await market.sub.unsubscribe()
    a, b, c = got[f"{boom}#0"], got[f"{slow}#1"], got[f"{fine}#3"]
    assert (a.action, a.model) == (HOLD, "boom")
    assert a.reasoning == f"plugin_error: boom raised RuntimeError: no data for {boom}; no order"
    assert (b.action, b.model) == (HOLD, "sleepy") and b.reasoning.startswith("plugin_timeout: sleepy gave no answer")
    assert (c.action, c.model) == (BUY, "momentum")  # the agent went on deciding, with orders
    by_subject = {r["subject"]: r["reason"] for r in reports}
    assert by_subject[f"md.bar.1s.sim.{boom}"].startswith("strategy boom: plugin_error: boom raised RuntimeError")
    assert by_subject[f"md.bar.1s.sim.{slow}"].startswith("strategy sleepy: plugin_timeout")
    assert metrics.PLUGIN_FAILURES.labels("boom", "plugin_error")._value.get() == errors_before + 1
    assert metrics.PLUGIN_FAILURES.labels("sleepy", "plugin_timeout")._value.get() == timeouts_before + 1


# ---------------------------------------------------------------- the same plugin, backtest and live


def breakout_closes() -> list[Decimal]:
    """Ranges, then breakouts up and down: the example plugin acts on a few bars."""
    closes = walk(70, seed=3)
    for k in (20, 21, 45, 46):
        closes[k] = closes[k - 1] + (D(4) if k < 40 else D(-5))
    return closes


def breakout_series(symbol: str) -> tuple[BarSeries, list[Bar]]:
    closes = breakout_closes()
    bars = [bar(symbol, c, i, high=c + D("0.3"), low=c - D("0.2")) for i, c in enumerate(closes)]
    return BarSeries(symbol=symbol, venue="sim", interval="1s", start_ts=[b.start_ts for b in bars],
                     open=[b.open for b in bars], high=[b.high for b in bars], low=[b.low for b in bars],
                     close=closes, volume=[b.volume for b in bars]), bars


def test_the_example_plugin_loads_and_decides(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "breakout.py")
    d = service.make_decider(TradingConfig(strategy="breakout", strategies_dir=str(tmp_path),
                                           params={"lookback": 3, "min_break_pct": 1}), {})
    rows = [bar("X-USD", c, i, high=D(c) + 1, low=D(c) - 1) for i, c in enumerate(["100", "101", "100", "103.53"])]
    up = asyncio.run(d.decide(ctx_for("X-USD", rows)))
    assert (up.action, up.confidence) == (BUY, 0.75)  # 103.53 over the channel's 102 by 1.5%: 0.5 at 1%, 1.0 at 2%
    down = [*rows[:3], bar("X-USD", "95", 3, high=D(96), low=D(94))]
    assert asyncio.run(d.decide(ctx_for("X-USD", down, position="0"))).action is HOLD  # nothing to sell
    assert asyncio.run(d.decide(ctx_for("X-USD", down, position="1"))).action is SELL
    with pytest.raises(StrategyLoadError, match="params.lookback"):
        service.make_decider(TradingConfig(strategy="breakout", strategies_dir=str(tmp_path),
                                           params={"lookback": 0}), {})
    write(tmp_path, "big.py", """
        from dataclasses import dataclass
        from services.trading_agent.plugin import StrategyPlugin

        @dataclass
        class N:
            n: int = 10

        class Big(StrategyPlugin):
            name = "big"
            Params = N

            def __init__(self, params):
                super().__init__(params)
                self.bars_needed = params.n
    """)
    with pytest.raises(StrategyLoadError, match=r"^\[trading_agent.symbols.\"X-USD\"\] strategy 'big' .*bars_needed "
                                                r"must be an int from 1 to 5000 .*got 5001"):
        service.make_deciders(TradingConfig(strategy="big", strategies_dir=str(tmp_path), symbols={
            "X-USD": {"params": {"n": 5001}}}), {})


async def test_a_plugin_decides_the_same_in_the_backtest_and_live(tmp_path: Path, connect, running_service,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The example plugin from a temp strategies folder: backtested by name (as `moon backtest
    --strategy breakout` does), then run by the live agent over the same bars; every bar's
    choice is the same."""
    folder = tmp_path / "strategies"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "breakout.py")
    symbol = "PLGBT-USD"
    series, bars = breakout_series(symbol)
    params = {"lookback": 10, "sell_only_when_long": False}

    backtested: dict[int, tuple[Action, float, str]] = {}
    decided = engine._Run.decided

    def spy(self, s, i, choice, ctx):  # every non-HOLD choice the backtest makes, by bar
        backtested[i] = (choice.action, choice.confidence, choice.reasoning)
        return decided(self, s, i, choice, ctx)

    monkeypatch.setattr(engine._Run, "decided", spy)
    preset = presets.backtesting_py(commission=0.001)  # no risk limit in the way: the plugin's trades fill

    def backtest(plugin_params: dict) -> BacktestResult:
        backtested.clear()
        return engine.run([series], strategy="breakout", overrides=preset["overrides"],
                          params=preset["params"] | {"strategies_dir": str(folder), "params": plugin_params})

    # with its default sell_only_when_long the plugin sees the backtest's position: one SELL, when long
    result = await asyncio.to_thread(backtest, {"lookback": 10})
    assert [(i, a) for i, (a, _, _) in sorted(backtested.items())] == [(20, BUY), (21, BUY), (45, SELL)]
    assert [(f.side, f.ts) for f in result.fills] == [("BUY", bars[21].start_ts), ("SELL", bars[46].start_ts)]
    result = await asyncio.to_thread(backtest, params)
    assert result.strategy == "breakout" and result.signals == len(backtested) == 5
    assert {a for a, _, _ in backtested.values()} == {BUY, SELL}

    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    config = {"trading_agent": {"strategy": "breakout", "params": params, "strategies_dir": str(folder),
                                "workers": 1}}
    market = await FakeMarket(md).start()
    signals = await operator.collect(f"agent.signal.trading.{symbol}")
    live: dict[int, Signal] = {}
    try:
        async with running_service("trading-agent", service.main, config, operator):
            await allow_trading(risk, symbol)
            for i, b in enumerate(bars):
                await market.publish(b)
                live[i] = await next_signal(signals)
    finally:
        await market.sub.unsubscribe()
    acted = {i for i, s in live.items() if "broke out above by" in s.reasoning or "broke down below by" in s.reasoning}
    assert acted == set(backtested)
    for i, (action, confidence, reasoning) in backtested.items():
        s = live[i]
        assert s.origin_ts == bars[i].end_ts and s.model == "breakout"
        assert s.reasoning.startswith(reasoning + "; ") and s.confidence == confidence
        assert s.action in (action, HOLD)  # HOLD when the agent refuses the order (no long to sell)
    assert any(s.action is BUY for s in live.values())


def test_a_plugin_that_raises_in_a_backtest_abstains_and_the_run_goes_on(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "bad.py", MISBEHAVING)
    series, _ = breakout_series("PLGBX-USD")
    with caplog.at_level("WARNING", logger="services.backtest.engine"):
        result = engine.run([series], strategy="boom", params={"strategies_dir": str(tmp_path)})
    assert (result.strategy, result.signals, result.fills, result.bars) == ("boom", 0, [], len(series))
    assert (f"PLGBX-USD: the strategy abstained on {len(series)} bars (HOLD); the first: plugin_error: boom raised "
            "RuntimeError: no data for PLGBX-USD") in caplog.text
