"""Trading agent: decides BUY / SELL / HOLD per symbol on every closed bar and price alert.

- `plugin`: the strategy plugin interface (StrategyPlugin, StrategyContext, Choice);
- `registry`: plugins from `strategies_dir` and the entry points `moonbus.strategies`, each
  symbol's strategy and params from the config;
- `strategy`: the built-in strategies (momentum, mean reversion, MA crossover), plugins (pure);
- `decide`: deciders: a strategy, or the LLM strategy with its deterministic fallback;
- `sizing`: how much to buy or sell, exact Decimal arithmetic (pure);
- `agent`: decision + context -> Signal and order, gated by the risk verdict (pure);
- `context`: recent bars, verdicts, account, sentiment from the bus and the KV bucket;
- `service`: the bus wiring, queue group `trading-agent` (`python -m services.trading_agent`).
"""
