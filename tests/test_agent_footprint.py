"""The Python agents stay lean: the LLM SDKs (anthropic, openai: ~40 MB of modules) are
imported only by a process whose [llm] provider uses one (services/common/llm/factory.py), and
no service process loads aiohttp (services/common/entry.py)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from services.devstack.natsserver import REPO_ROOT

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


SERVICE_MAINS = sorted(p for p in (REPO_ROOT / "services").glob("*/__main__.py") if "run(main)" in p.read_text())


def test_every_service_imports_its_entry_before_nats() -> None:
    """services/common/entry.py must come before anything that imports nats: the first
    import of `services` or `nats` in each service's `__main__`."""
    assert len(SERVICE_MAINS) >= 7, SERVICE_MAINS
    for path in SERVICE_MAINS:
        imported = [imported_package(n) for n in ast.parse(path.read_text()).body
                    if isinstance(n, ast.Import | ast.ImportFrom)]
        first = next(name for name in imported if name.split(".")[0] in ("services", "nats"))
        assert first == "services.common.entry", path


def imported_package(node: ast.Import | ast.ImportFrom) -> str:
    """The module an import statement names (a relative one is inside `services`)."""
    if isinstance(node, ast.Import):
        return node.names[0].name
    return "services" if node.level else node.module or ""


def test_a_service_process_runs_without_aiohttp() -> None:
    """nats-py loads aiohttp whenever installed (~11 MB per process); entry.py leaves it out."""
    probe = """
import json, sys
import services.common.entry
import services.trading_agent.service
print(json.dumps([sys.modules.get("aiohttp") is None, "nats" in sys.modules]))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, True]
