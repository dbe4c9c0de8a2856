"""Risk agent: the account rules of the original system, on top of rust-risk.

rust-risk enforces per-order limits; this agent watches the whole account
(`risk.account`) and flattens every position when a rule is breached.

- `rules`: the rules (USD / percent, day or sliding window), the latch, the closing orders (pure);
- `confirm`: the optional AI confirmation before closing (hold only on a confident HOLD);
- `service`: the bus wiring, kill switch (`python -m services.risk_agent`).
"""
