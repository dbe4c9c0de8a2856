"""An LLM strategy backtests through the record/replay cache: a recording run asks the
model (a local server speaking OpenAI's chat-completions wire format) once per bar and
states its cost estimate first; a replay of the same run asks nothing and gives the same
result, byte for byte; a replay with nothing recorded is the model's outage, so the
fallback strategy decides, as live."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.backtest import engine, llm
from services.common.config import REPO_ROOT, load
from services.trading_agent.config import TradingConfig
from tests.test_backtest_engine import wave

MODEL = "fake-model-1"


class FakeOpenAI(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: a decision that depends on the prompt only (so the same
    question gets the same answer), with token counts."""

    calls: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body)
        prompt = body["messages"][-1]["content"]
        action = ("BUY", "SELL", "HOLD")[hashlib.sha256(prompt.encode()).digest()[0] % 3]
        answer = {"reasoning": f"scripted {action}", "action": action, "confidence": 0.9}
        reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1741569952, "model": MODEL,
                 "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                              "message": {"role": "assistant", "content": json.dumps(answer), "refusal": None}}],
                 "usage": {"prompt_tokens": 400, "completion_tokens": 40, "total_tokens": 440}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_openai():
    FakeOpenAI.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def settings(base_url: str, cache: Path) -> dict:
    return {"llm": {"provider": "local", "cache_dir": str(cache), "budget_usd_per_hour": "1000",
                    "budget_usd_per_day": "1000", "max_retries": 0,
                    "endpoints": {"local": {"kind": "openai_compatible", "model": MODEL, "base_url": base_url,
                                            "api_key_env": "", "output": "json_object"}},
                    "prices": {MODEL: {"input": "3", "output": "15"}}}}


def test_record_then_replay_is_free_and_the_same(fake_openai: str, tmp_path: Path) -> None:
    series = [wave("BTC-USD", n=60)]
    overrides = settings(fake_openai, tmp_path / "cache")
    params = {"strategy": "llm", "llm_bars": 10, "llm_fallback": "ma_crossover", "ma_fast": 3, "ma_slow": 8}

    table = load(REPO_ROOT / "moonbus.toml", {}) | overrides
    cost = llm.estimate(series, TradingConfig(**params), llm.llm_settings(table, "record"))
    assert cost is not None and cost.decisions == 60 and cost.usd > 0
    assert f"${cost.usd}" in cost.text() and MODEL in cost.text()

    recorded = engine.run(series, params=params, overrides=overrides, llm_mode="record")
    assert len(FakeOpenAI.calls) == 60  # once per bar's close, the live prompt
    assert "Last 10 closed bars" in FakeOpenAI.calls[-1]["messages"][-1]["content"]
    assert recorded.llm_cost_usd == pytest.approx(60 * (400 * 3 + 40 * 15) / 1e6)
    assert recorded.fills, "the scripted model traded"
    assert len(list((tmp_path / "cache").iterdir())) == 60

    FakeOpenAI.calls.clear()
    replayed = engine.run(series, params=params, overrides=overrides)  # replay: the default
    assert FakeOpenAI.calls == []
    assert replayed.llm_cost_usd == recorded.llm_cost_usd  # the recorded answers' cost, not spent again
    assert dataclasses.replace(replayed, llm_cost_usd=0) == dataclasses.replace(recorded, llm_cost_usd=0)


def test_a_replay_without_recordings_falls_back_to_the_rule(fake_openai: str, tmp_path: Path) -> None:
    series = [wave("BTC-USD", n=60)]
    params = {"strategy": "llm", "llm_bars": 10, "llm_fallback": "ma_crossover", "ma_fast": 3, "ma_slow": 8,
              "ma_min_gap_pct": 0}
    replayed = engine.run(series, params=params, overrides=settings(fake_openai, tmp_path / "empty"))
    assert FakeOpenAI.calls == []
    rule = engine.run(series, strategy="ma_crossover", params=params | {"strategy": "ma_crossover"})
    assert [(f.ts, f.side, f.quantity) for f in replayed.fills] == [(f.ts, f.side, f.quantity) for f in rule.fills]
    assert replayed.fills and replayed.llm_cost_usd == 0


def test_offline_has_no_cost_to_estimate() -> None:
    table = load(REPO_ROOT / "moonbus.toml", {})
    assert llm.estimate([wave("BTC-USD")], TradingConfig(strategy="llm"), llm.llm_settings(table, "record")) is None
    assert Decimal("0") == engine.run([wave("BTC-USD", n=50)], params={"strategy": "llm"}).llm_cost_usd
