"""The live providers against a local fake LLM server speaking the real wire formats:
Anthropic's Messages API (a tool_use block) and OpenAI's chat completions (structured
outputs, JSON mode, plain text), through the official SDKs. No key, no internet.

`FakeLLM` (also used by test_llm_guard.py) serves scripted responses in order and keeps
every request it received.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY

from services.common.llm import (
    Decision,
    DecisionRequest,
    EndpointConfig,
    LLMConfig,
    build_provider,
)
from services.common.llm.config import Price
from services.common.llm.live import ANSWER_SCHEMA, TOOL_NAME

KEY_ENV = "MOONBUS_TEST_LLM_KEY"
KEY = "sk-test-not-a-real-key-0123456789"
MODEL = "fake-model-1"
PRICE = Price(input=Decimal(3), output=Decimal(15))  # USD per million tokens
ANSWER = {"reasoning": "Momentum up over 20 bars, sentiment positive.", "action": "BUY", "confidence": 0.8}
REQUEST = DecisionRequest(agent="trading", symbol="BTC-USD", system="You trade crypto.",
                          prompt="BTC-USD closes: 97000, 97100, 97250. Decide.", timeout_s=5.0)


@dataclass
class Scripted:
    status: int = 200
    body: Any = None  # dict: JSON; str: raw text
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeLLM:
    """Anthropic (POST /v1/messages) and OpenAI (POST /v1/chat/completions) on 127.0.0.1."""

    def __init__(self) -> None:
        self.script: deque[Scripted] = deque()
        self.received: list[Received] = []
        self.app = FastAPI()
        self.app.post("/v1/messages")(self._serve)
        self.app.post("/v1/chat/completions")(self._serve)
        self.port = 0

    def reply(self, *responses: Scripted) -> None:
        self.script.clear()
        self.received.clear()
        self.script.extend(responses)

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"  # the SDK appends /v1/messages

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"  # the SDK appends /chat/completions

    async def _serve(self, request: Request) -> Response:
        self.received.append(Received(request.url.path, dict(request.headers), await request.json()))
        if not self.script:
            return JSONResponse({"error": {"message": "no scripted response left"}}, status_code=599)
        scripted = self.script.popleft()
        await asyncio.sleep(scripted.delay_s)
        if isinstance(scripted.body, str):
            return Response(scripted.body, scripted.status, scripted.headers, media_type="application/json")
        return JSONResponse(scripted.body, scripted.status, scripted.headers)

    async def serve(self) -> AsyncIterator[FakeLLM]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=1))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        try:
            yield self
        finally:
            server.should_exit = True
            await task
            sock.close()


@pytest.fixture(scope="module")
async def fake_llm() -> AsyncIterator[FakeLLM]:
    async for server in FakeLLM().serve():
        yield server


# --- the exact wire JSON of each API ---------------------------------------------------------

def anthropic_message(content: list[dict[str, Any]], stop_reason: str = "tool_use",
                      tokens: tuple[int, int] = (412, 58)) -> dict[str, Any]:
    return {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": MODEL,
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]}}


def anthropic_tool_use(answer: dict[str, Any]) -> dict[str, Any]:
    return anthropic_message([
        {"type": "text", "text": "I'll record the decision."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": TOOL_NAME, "input": answer},
    ])


def anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


def openai_completion(content: str | None, refusal: str | None = None, finish_reason: str = "stop",
                      tokens: tuple[int, int] = (412, 58)) -> dict[str, Any]:
    return {"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion", "created": 1741569952,
            "model": MODEL, "service_tier": "default", "system_fingerprint": "fp_b376dfbbd5",
            "choices": [{"index": 0, "logprobs": None, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content, "refusal": refusal, "annotations": []}}],
            "usage": {"prompt_tokens": tokens[0], "completion_tokens": tokens[1], "total_tokens": sum(tokens)}}


def openai_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "requests", "param": None, "code": code}}


# --- one endpoint per provider kind --------------------------------------------------------

KINDS = ["anthropic", "openai", "compatible_json_mode", "compatible_text"]


def endpoint(kind: str, fake: FakeLLM) -> EndpointConfig:
    if kind == "anthropic":
        return EndpointConfig(kind="anthropic", model=MODEL, base_url=fake.anthropic_url, api_key_env=KEY_ENV)
    if kind == "openai":
        return EndpointConfig(kind="openai", model=MODEL, base_url=fake.openai_url, api_key_env=KEY_ENV)
    output = "json_object" if kind == "compatible_json_mode" else "text"
    return EndpointConfig(kind="openai_compatible", model=MODEL, base_url=fake.openai_url, api_key_env=KEY_ENV,
                          output=output)


def llm_config(kind: str, fake: FakeLLM, **overrides: Any) -> LLMConfig:
    settings = {"provider": kind, "endpoints": {kind: endpoint(kind, fake)}, "prices": {MODEL: PRICE},
                "max_retries": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.05,
                "budget_usd_per_hour": Decimal(1000), "budget_usd_per_day": Decimal(1000)}
    return LLMConfig(**(settings | overrides))


def success(kind: str, answer: dict[str, Any] = ANSWER) -> Scripted:
    if kind == "anthropic":
        return Scripted(body=anthropic_tool_use(answer))
    if kind == "compatible_text":  # a local model that wraps its JSON in prose and a fence
        return Scripted(body=openai_completion(f"Here is my decision:\n```json\n{json.dumps(answer)}\n```"))
    return Scripted(body=openai_completion(json.dumps(answer)))


def error(kind: str, status: int, headers: dict[str, str] | None = None) -> Scripted:
    kinds = {429: ("rate_limit_error", "rate_limit_exceeded"), 500: ("api_error", "server_error"),
             401: ("authentication_error", "invalid_api_key")}
    anthropic_kind, openai_code = kinds[status]
    body = anthropic_error(anthropic_kind, f"status {status}") if kind == "anthropic" else \
        openai_error(openai_code, f"status {status}")
    return Scripted(status=status, body=body, headers=headers or {})


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def decide(kind: str, fake: FakeLLM, request: DecisionRequest = REQUEST, **overrides: Any) -> Decision:
    return await ask(llm_config(kind, fake, **overrides), request)


async def ask(config: LLMConfig, request: DecisionRequest = REQUEST) -> Decision:
    provider = build_provider(config)
    try:
        return await provider.decide(request)
    finally:
        await provider.aclose()  # type: ignore[attr-defined]


# --- the tests -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
async def test_success_is_a_signed_decision_with_tokens_and_cost(kind: str, fake_llm: FakeLLM, key: str) -> None:
    calls_before = metric("moonbus_llm_calls_total", provider=kind, model=MODEL, outcome="ok")
    tokens_before = metric("moonbus_llm_tokens_total", provider=kind, model=MODEL, direction="output")
    fake_llm.reply(success(kind))
    decision = await decide(kind, fake_llm)
    assert (decision.action, decision.conviction, decision.confidence) == ("BUY", 0.8, 0.8)
    assert decision.reasoning == ANSWER["reasoning"]
    assert decision.model == f"{kind}:{MODEL}" and not decision.fallback and decision.error is None
    assert (decision.input_tokens, decision.output_tokens) == (412, 58)
    assert decision.cost_usd == pytest.approx((412 * 3 + 58 * 15) / 1e6)
    assert decision.latency_ms > 0
    assert metric("moonbus_llm_calls_total", provider=kind, model=MODEL, outcome="ok") == calls_before + 1
    assert metric("moonbus_llm_tokens_total", provider=kind, model=MODEL, direction="output") == tokens_before + 58


async def test_anthropic_request_forces_the_decision_tool(fake_llm: FakeLLM, key: str) -> None:
    fake_llm.reply(success("anthropic"))
    await decide("anthropic", fake_llm)
    [sent] = fake_llm.received
    assert sent.path == "/v1/messages"
    # The key as this SDK version sends it (older ones: x-api-key; 2.x: a bearer token).
    assert KEY in (sent.headers.get("x-api-key"), sent.headers.get("authorization", "").removeprefix("Bearer "))
    assert "anthropic-version" in sent.headers
    assert sent.body["model"] == MODEL and sent.body["max_tokens"] == 512
    assert sent.body["tools"] == [{"name": TOOL_NAME, "description": "Record your trading decision for the symbol.",
                                   "input_schema": ANSWER_SCHEMA}]
    assert sent.body["tool_choice"] == {"type": "tool", "name": TOOL_NAME, "disable_parallel_tool_use": True}
    assert sent.body["system"].startswith(REQUEST.system)
    assert sent.body["messages"] == [{"role": "user", "content": REQUEST.prompt}]


@pytest.mark.parametrize(("kind", "response_format", "max_tokens_key"), [
    ("openai", {"type": "json_schema",
                "json_schema": {"name": "trading_decision", "schema": ANSWER_SCHEMA, "strict": True}},
     "max_completion_tokens"),
    ("compatible_json_mode", {"type": "json_object"}, "max_tokens"),
    ("compatible_text", None, "max_tokens"),
])
async def test_openai_request_asks_for_the_configured_structure(
        kind: str, response_format: dict[str, Any] | None, max_tokens_key: str, fake_llm: FakeLLM, key: str) -> None:
    fake_llm.reply(success(kind))
    await decide(kind, fake_llm)
    [sent] = fake_llm.received
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body.get("response_format") == response_format
    assert sent.body[max_tokens_key] == 512
    system, user = sent.body["messages"]
    assert system["role"] == "system" and system["content"].startswith(REQUEST.system) and "JSON" in system["content"]
    assert user == {"role": "user", "content": REQUEST.prompt}


async def test_an_anthropic_answer_without_the_tool_abstains(fake_llm: FakeLLM, key: str) -> None:
    fake_llm.reply(Scripted(body=anthropic_message([{"type": "text", "text": "BUY, definitely."}], "end_turn")))
    decision = await decide("anthropic", fake_llm)
    assert decision.action == "ABSTAIN" and decision.conviction == 0
    assert decision.error == "unparsable answer (stop: end_turn): no answer in the response"
    assert decision.input_tokens == 412  # the tokens were spent all the same


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [
    {"reasoning": "up", "action": "STRONG_BUY", "confidence": 0.9},   # outside the enum
    {"reasoning": "up", "action": "BUY", "confidence": 1.5},          # out of range
    {"reasoning": "up", "action": "BUY", "confidence": "high"},       # wrong type
    {"reasoning": "up", "action": "BUY"},                             # missing field
    {"reasoning": "up", "action": "BUY", "confidence": 0.9, "size": 10},  # outside the schema
])
async def test_an_answer_outside_the_schema_abstains(kind: str, bad: dict[str, Any], fake_llm: FakeLLM,
                                                     key: str) -> None:
    fake_llm.reply(success(kind, bad))
    decision = await decide(kind, fake_llm)
    assert decision.action == "ABSTAIN" and decision.conviction == 0 and decision.confidence == 0
    assert decision.error and decision.error.startswith("unparsable answer")


@pytest.mark.parametrize(("kind", "content"), [
    ("openai", '{"reasoning": "up", "action": "BUY", "confidence": 0.9'),  # cut off
    ("compatible_json_mode", "BUY"),
    ("compatible_text", "I would buy here, with high confidence."),
])
async def test_malformed_json_abstains_never_a_guessed_trade(kind: str, content: str, fake_llm: FakeLLM,
                                                              key: str) -> None:
    outcome_before = metric("moonbus_llm_calls_total", provider=kind, model=MODEL, outcome="parse_error")
    fake_llm.reply(Scripted(body=openai_completion(content, finish_reason="length")))
    decision = await decide(kind, fake_llm)
    assert decision.action == "ABSTAIN" and decision.conviction == 0
    assert decision.error and decision.error.startswith("unparsable answer (stop: length)")
    assert metric("moonbus_llm_calls_total", provider=kind, model=MODEL, outcome="parse_error") == outcome_before + 1


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refusal_abstains(kind: str, fake_llm: FakeLLM, key: str) -> None:
    if kind == "anthropic":
        fake_llm.reply(Scripted(body=anthropic_message([{"type": "text", "text": "I can't help with that."}],
                                                       "refusal")))
        expected = "refused: I can't help with that."
    else:
        fake_llm.reply(Scripted(body=openai_completion(None, refusal="I'm sorry, I can't assist with that.")))
        expected = "refused: I'm sorry, I can't assist with that."
    decision = await decide(kind, fake_llm)
    assert (decision.action, decision.error) == ("ABSTAIN", expected)


async def test_a_model_may_abstain_itself(fake_llm: FakeLLM, key: str) -> None:
    fake_llm.reply(success("openai", {"reasoning": "Two bars are not enough.", "action": "ABSTAIN",
                                      "confidence": 0.9}))
    decision = await decide("openai", fake_llm)
    assert (decision.action, decision.conviction, decision.error) == ("ABSTAIN", 0.0, None)
    assert decision.reasoning == "Two bars are not enough."


@pytest.mark.parametrize("kind", KINDS)
async def test_429_then_success_waits_the_retry_after(kind: str, fake_llm: FakeLLM, key: str) -> None:
    retries_before = metric("moonbus_llm_retries_total", provider=kind, model=MODEL, reason="429")
    fake_llm.reply(error(kind, 429, {"retry-after": "0.4"}), success(kind))
    start = time.perf_counter()
    decision = await decide(kind, fake_llm)
    # The backoff is configured at <= 0.05 s: only the server's Retry-After explains the wait.
    assert time.perf_counter() - start >= 0.4
    assert decision.action == "BUY" and decision.error is None
    assert len(fake_llm.received) == 2
    assert metric("moonbus_llm_retries_total", provider=kind, model=MODEL, reason="429") == retries_before + 1


async def test_a_retry_after_past_the_deadline_gives_up_at_once(fake_llm: FakeLLM, key: str) -> None:
    fake_llm.reply(error("openai", 429, {"retry-after": "30"}), success("openai"))
    decision = await decide("openai", fake_llm, REQUEST.model_copy(update={"timeout_s": 2.0}))
    assert decision.action == "ABSTAIN" and len(fake_llm.received) == 1
    assert decision.error and decision.error.startswith("HTTP 429") and "would pass the 2.0s deadline" in decision.error


@pytest.mark.parametrize("kind", KINDS)
async def test_a_slow_model_times_out_and_abstains(kind: str, fake_llm: FakeLLM, key: str) -> None:
    fake_llm.reply(Scripted(body=success(kind).body, delay_s=3.0))
    decision = await decide(kind, fake_llm, REQUEST.model_copy(update={"timeout_s": 0.3}))
    assert (decision.action, decision.error) == ("ABSTAIN", "timeout after 0.3s")


@pytest.mark.parametrize("kind", KINDS)
async def test_500_until_retries_run_out_abstains(kind: str, fake_llm: FakeLLM, key: str) -> None:
    fake_llm.reply(*[error(kind, 500)] * 3, success(kind))
    decision = await decide(kind, fake_llm)  # max_retries = 2: three attempts
    assert decision.action == "ABSTAIN" and len(fake_llm.received) == 3
    assert decision.error and decision.error.startswith("HTTP 500") and decision.error.endswith("(after 2 retries)")


async def test_a_client_error_is_not_retried_and_the_key_never_shows(fake_llm: FakeLLM, key: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake_llm.reply(error("anthropic", 401), success("anthropic"))
    decision = await decide("anthropic", fake_llm)
    assert decision.action == "ABSTAIN" and len(fake_llm.received) == 1
    assert decision.error and decision.error.startswith("HTTP 401")
    assert KEY not in decision.model_dump_json() and KEY not in caplog.text


async def test_no_server_is_a_connection_error_after_retries(key: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = EndpointConfig(kind="openai", model=MODEL, base_url=f"http://127.0.0.1:{port}/v1", api_key_env=KEY_ENV)
    config = LLMConfig(provider="down", endpoints={"down": settings}, prices={MODEL: PRICE}, max_retries=1,
                       backoff_initial_s=0.01, backoff_max_s=0.01)
    retries_before = metric("moonbus_llm_retries_total", provider="down", model=MODEL, reason="connection")
    decision = await ask(config)
    assert decision.action == "ABSTAIN"
    assert decision.error and decision.error.startswith("connection error") and "(after 1 retries)" in decision.error
    assert metric("moonbus_llm_retries_total", provider="down", model=MODEL, reason="connection") == retries_before + 1


async def test_a_missing_key_abstains_without_a_call(fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    fake_llm.reply(success("openai"))
    decision = await decide("openai", fake_llm)
    assert decision.action == "ABSTAIN" and fake_llm.received == []
    assert decision.error == f"no API key: environment variable {KEY_ENV} is not set"


async def test_a_local_server_needs_no_key(fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    local = EndpointConfig(kind="openai_compatible", model=MODEL, base_url=fake_llm.openai_url, api_key_env="",
                           output="json_schema")
    fake_llm.reply(success("openai"))
    decision = await ask(LLMConfig(provider="local", endpoints={"local": local}, prices={MODEL: PRICE}))
    assert decision.action == "BUY" and len(fake_llm.received) == 1
