"""Swarm agent: asks several models the same question and reports their consensus.

- `model`: the `Model` protocol and `ask_models` (parallel, a timeout each, a failing
  model abstains);
- `offline`: the deterministic offline models (momentum, mean reversion, sentiment);
- `consensus`: majority / weighted / quorum (pure);
- `service`: the bus wiring, serving `agent.api.swarm.ask` (`python -m services.swarm_agent`).
"""
