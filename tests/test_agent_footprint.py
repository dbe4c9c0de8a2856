"""The Python agents stay lean: the LLM SDKs (anthropic, openai: ~40 MB of modules) are
imported only by a process whose [llm] provider uses one (services/common/llm/factory.py)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import services.trading_agent.service, services.risk_agent.service, services.sentiment_agent.service
import services.swarm_agent.service
print(json.dumps(sorted(m for m in ("anthropic", "openai") if m in sys.modules)))
"""


def test_agents_start_without_the_llm_sdks() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_live_provider_still_brings_its_sdk() -> None:
    probe = """
import json, sys
from services.common.llm import EndpointConfig, LLMConfig, build_provider
kinds = {"a": "anthropic", "o": "openai"}
for name, kind in kinds.items():
    endpoint = EndpointConfig(kind=kind, model="m", base_url="http://127.0.0.1:9", api_key_env="")
    config = LLMConfig(provider=name, endpoints={name: endpoint}, prices={"m": {"input": "1", "output": "1"}})
    provider = build_provider(config)
    print(json.dumps([name, type(provider.live).__name__, sorted(m for m in kinds.values() if m in sys.modules)]))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert lines == [["a", "AnthropicProvider", ["anthropic"]], ["o", "OpenAIProvider", ["anthropic", "openai"]]]
