"""Trading agent: turns ticks into orders with a deterministic strategy.

- `strategy`: the `Strategy` protocol and the momentum strategy (pure);
- `sizing`: how much to buy or sell, exact Decimal arithmetic (pure);
- `agent`: the decision state per symbol (verdicts, account, cooldowns) (pure);
- `service`: the bus wiring (`python -m services.trading_agent`).
"""
