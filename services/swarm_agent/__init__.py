"""Swarm agent: asks several models the same question and reports their consensus.

- `model`: the `Model` protocol and `ask_model` (a timeout each; a failing model abstains
  with its error, latency and cost);
- `offline`: the deterministic offline models (momentum, mean reversion, sentiment);
- `llm`: an [llm.endpoints] provider as a swarm member;
- `consensus`: majority / weighted / quorum (pure);
- `service`: the bus wiring: `agent.api.swarm.ask`, price alerts (`python -m services.swarm_agent`).
"""
