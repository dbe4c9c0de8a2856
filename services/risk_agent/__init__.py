"""Risk agent: the account rules of the original system, on top of rust-risk.

rust-risk enforces per-order limits; this agent watches the whole account
(`risk.account`) and flattens every position when a rule is breached.

- `rules`: the rules, the latch, the closing orders (pure);
- `service`: the bus wiring (`python -m services.risk_agent`).
"""
