"""What wraps every live provider: the cost budget, the offline fallback, the record/replay
cache; plus the offline provider, the [llm] config and the Decision's own checks. Live calls
go to the local fake LLM server of test_llm_providers.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from test_llm_providers import (
    ANSWER,
    KEY,
    KEY_ENV,
    MODEL,
    REQUEST,
    FakeLLM,
    Scripted,
    error,
    llm_config,
    metric,
    success,
)

from services.common import config as moonbus_config
from services.common.llm import (
    Answer,
    Decision,
    DecisionRequest,
    EndpointConfig,
    LLMConfig,
    OfflineProvider,
    Provider,
    build_provider,
)
from services.common.llm.budget import Budget
from services.common.llm.config import Price
from services.common.llm.factory import shared_budget

ROOT = Path(__file__).resolve().parent.parent
ONE_CALL_USD = Decimal(412 * 3 + 58 * 15) / 1_000_000  # the fake's usage at the test prices


def offline_rule(request: DecisionRequest) -> Answer:
    """A deterministic rule of the request, as an agent would pass (here: the last two closes)."""
    closes = [float(x) for x in request.prompt.split(": ")[1].removesuffix(". Decide.").split(", ")]
    action = "BUY" if closes[-1] > closes[-2] else "SELL" if closes[-1] < closes[-2] else "HOLD"
    return Answer(action=action, confidence=0.6 if action != "HOLD" else 0.0,
                  reasoning=f"last close {closes[-1]} vs {closes[-2]}")


OFFLINE = OfflineProvider("offline-last-move", offline_rule)


@pytest.fixture(scope="module")
async def fake_llm() -> AsyncIterator[FakeLLM]:
    async for server in FakeLLM().serve():
        yield server


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def ask(provider: Provider, request: DecisionRequest = REQUEST) -> Decision:
    return await provider.decide(request)


# --- the cost budget --------------------------------------------------------------------

@pytest.mark.parametrize(("window", "per_hour", "per_day", "refill_s"), [
    ("hour", ONE_CALL_USD, Decimal(1000), 3600),
    ("day", Decimal(1000), ONE_CALL_USD, 86400),
])
async def test_a_spent_budget_falls_back_visibly_until_the_window_refills(
        window: str, per_hour: Decimal, per_day: Decimal, refill_s: float, fake_llm: FakeLLM, key: str) -> None:
    clock = Clock()
    provider = build_provider(llm_config("openai", fake_llm), OFFLINE, budget=Budget(per_hour, per_day, clock))
    fake_llm.reply(success("openai"), success("openai"))

    first = await ask(provider)
    assert (first.action, first.fallback, first.model) == ("BUY", False, f"openai:{MODEL}")
    assert metric("moonbus_llm_budget_exhausted", window=window) == 1

    clock.now += refill_s - 1  # still inside the window: the offline model answers, no call made
    second = await ask(provider)
    assert (second.action, second.fallback, second.model) == ("BUY", True, "offline-last-move")
    assert second.reasoning == "last close 97250.0 vs 97100.0"
    assert second.error and second.error.startswith(f"budget exhausted: ${ONE_CALL_USD:.4f} spent of ${ONE_CALL_USD}"
                                                    f" per {window}; refills in 1s")
    assert second.cost_usd == 0 and len(fake_llm.received) == 1

    clock.now += 2  # the first call's cost has left the window
    third = await ask(provider)
    assert (third.action, third.fallback, len(fake_llm.received)) == ("BUY", False, 2)


async def test_without_a_fallback_a_spent_budget_abstains(fake_llm: FakeLLM, key: str) -> None:
    provider = build_provider(llm_config("anthropic", fake_llm), budget=Budget(Decimal(0), Decimal(0)))
    fake_llm.reply(success("anthropic"))
    decision = await ask(provider)
    assert decision.action == "ABSTAIN" and not decision.fallback and fake_llm.received == []
    assert decision.error == "budget exhausted: budget_usd_per_hour is 0 (LLM calls are off)"


async def test_every_provider_of_a_process_shares_one_budget(fake_llm: FakeLLM) -> None:
    config = llm_config("openai", fake_llm)
    first, second = build_provider(config, OFFLINE), build_provider(config, OFFLINE, endpoint="openai")
    assert first.budget is second.budget is shared_budget(config)  # type: ignore[attr-defined]


# --- the fallback on errors -----------------------------------------------------------------

async def test_an_outage_falls_back_to_the_offline_model(fake_llm: FakeLLM, key: str) -> None:
    before = metric("moonbus_llm_fallbacks_total", provider="openai", model=MODEL, reason="http_error")
    provider = build_provider(llm_config("openai", fake_llm), OFFLINE)
    fake_llm.reply(*[error("openai", 500)] * 3)
    decision = await ask(provider)
    assert (decision.action, decision.fallback, decision.model) == ("BUY", True, "offline-last-move")
    assert decision.error and decision.error.startswith("HTTP 500") and decision.error.endswith("(after 2 retries)")
    assert metric("moonbus_llm_fallbacks_total", provider="openai", model=MODEL, reason="http_error") == before + 1


async def test_an_unusable_answer_falls_back_and_keeps_its_cost(fake_llm: FakeLLM, key: str) -> None:
    provider = build_provider(llm_config("anthropic", fake_llm), OFFLINE)
    fake_llm.reply(success("anthropic", {"reasoning": "x", "action": "MOON", "confidence": 1}))
    decision = await ask(provider)
    assert (decision.action, decision.fallback) == ("BUY", True)
    assert decision.error and decision.error.startswith("unparsable answer")
    assert (decision.input_tokens, decision.output_tokens) == (412, 58)
    assert decision.cost_usd == pytest.approx(float(ONE_CALL_USD))


async def test_with_fallback_on_error_off_an_outage_abstains(fake_llm: FakeLLM, key: str) -> None:
    provider = build_provider(llm_config("openai", fake_llm, fallback_on_error=False), OFFLINE)
    fake_llm.reply(*[error("openai", 500)] * 3)
    decision = await ask(provider)
    assert (decision.action, decision.fallback, decision.model) == ("ABSTAIN", False, f"openai:{MODEL}")


async def test_a_models_own_abstention_is_kept(fake_llm: FakeLLM, key: str) -> None:
    provider = build_provider(llm_config("openai", fake_llm), OFFLINE)
    fake_llm.reply(success("openai", {"reasoning": "unclear", "action": "ABSTAIN", "confidence": 0.5}))
    decision = await ask(provider)
    assert (decision.action, decision.fallback, decision.error) == ("ABSTAIN", False, None)


# --- record / replay --------------------------------------------------------------------

async def test_record_then_replay_without_any_call(fake_llm: FakeLLM, key: str, tmp_path: Path) -> None:
    recorder = build_provider(llm_config("anthropic", fake_llm, cache_mode="record", cache_dir=str(tmp_path)))
    fake_llm.reply(success("anthropic"))
    recorded = await ask(recorder)

    [entry_file] = tmp_path.iterdir()
    assert entry_file.name.startswith(f"trading__anthropic_{MODEL}__")
    entry = json.loads(entry_file.read_text())  # human-readable: the question and the answer
    assert (entry["agent"], entry["model"], entry["symbol"]) == ("trading", f"anthropic:{MODEL}", "BTC-USD")
    assert (entry["system"], entry["prompt"]) == (REQUEST.system, REQUEST.prompt)
    assert entry["decision"]["action"] == "BUY" and entry["decision"]["reasoning"] == ANSWER["reasoning"]

    replayer = build_provider(llm_config("anthropic", fake_llm, cache_mode="replay", cache_dir=str(tmp_path)),
                              OFFLINE)
    fake_llm.reply()  # nothing scripted: a live call would fail
    assert await ask(replayer) == recorded
    assert fake_llm.received == []


async def test_replay_of_a_missing_entry_abstains_and_never_calls(fake_llm: FakeLLM, key: str,
                                                                   tmp_path: Path) -> None:
    replayer = build_provider(llm_config("openai", fake_llm, cache_mode="replay", cache_dir=str(tmp_path)), OFFLINE)
    fake_llm.reply(success("openai"))
    decision = await ask(replayer)
    assert decision.action == "ABSTAIN" and not decision.fallback and fake_llm.received == []
    assert decision.error and decision.error.startswith(f"replay: no recorded answer in {tmp_path}/trading__openai_")


async def test_the_cache_key_is_agent_model_and_prompt(fake_llm: FakeLLM, key: str, tmp_path: Path) -> None:
    recorder = build_provider(llm_config("openai", fake_llm, cache_mode="record", cache_dir=str(tmp_path)))
    fake_llm.reply(success("openai"))
    await ask(recorder)
    replayer = build_provider(llm_config("openai", fake_llm, cache_mode="replay", cache_dir=str(tmp_path)))
    for other in ({"agent": "swarm"}, {"prompt": REQUEST.prompt + " "}, {"system": "Be bold."}):
        decision = await ask(replayer, REQUEST.model_copy(update=other))
        assert decision.action == "ABSTAIN" and decision.error and decision.error.startswith("replay: no recorded")
    assert (await ask(replayer)).action == "BUY"


async def test_an_outage_is_not_recorded(fake_llm: FakeLLM, key: str, tmp_path: Path) -> None:
    recorder = build_provider(llm_config("openai", fake_llm, cache_mode="record", cache_dir=str(tmp_path)))
    fake_llm.reply(Scripted(body=success("openai").body, delay_s=3.0))
    decision = await ask(recorder, REQUEST.model_copy(update={"timeout_s": 0.3}))
    assert decision.action == "ABSTAIN" and list(tmp_path.iterdir()) == []


# --- offline models -------------------------------------------------------------------

async def test_offline_decisions_are_deterministic() -> None:
    provider = build_provider(LLMConfig(), OFFLINE)
    assert provider is OFFLINE  # "offline" = the agent's own model, nothing in between
    falling = REQUEST.model_copy(update={"prompt": "BTC-USD closes: 97250, 97100. Decide."})
    first = [await ask(provider, r) for r in (REQUEST, falling)]
    again = [await ask(provider, r) for r in (REQUEST, falling)]
    assert [d.model_dump(exclude={"latency_ms"}) for d in first] == [d.model_dump(exclude={"latency_ms"}) for d in again]
    assert [(d.action, d.conviction) for d in first] == [("BUY", 0.6), ("SELL", -0.6)]


async def test_a_broken_offline_model_abstains() -> None:
    async def not_an_answer(request: DecisionRequest) -> Any:
        return "BUY"

    for model in (lambda r: 1 / 0, not_an_answer):
        decision = await OfflineProvider("offline-broken", model).decide(REQUEST)
        assert (decision.action, decision.model) == ("ABSTAIN", "offline-broken")
        assert decision.error and decision.error.startswith("offline model failed")


# --- config and the Decision ------------------------------------------------------------

def test_the_shipped_llm_config_is_valid_and_offline() -> None:
    llm = moonbus_config.section(moonbus_config.load(ROOT / "moonbus.toml", {}), "llm", LLMConfig)
    assert llm.provider == "offline" and llm.cache_mode == "off"
    assert {e.kind for e in llm.endpoints.values()} == {"anthropic", "openai", "openai_compatible"}


@pytest.mark.parametrize(("settings", "message"), [
    ({"provider": "gpt"}, "neither 'offline' nor in endpoints"),
    ({"endpoints": {"x": {"kind": "openai", "model": "unpriced"}}}, "no price for model(s) ['unpriced']"),
    ({"endpoints": {"x": {"kind": "openai_compatible", "model": "m"}}, "prices": {"m": {"input": "0", "output": "0"}}},
     "needs base_url"),
    ({"endpoints": {"x": {"kind": "anthropic", "model": "m", "output": "json_schema"}},
      "prices": {"m": {"input": "0", "output": "0"}}}, "not supported by kind 'anthropic'"),
    ({"budget_usd_per_hour": 1.5}, "write money as a decimal string"),
    ({"cache_mode": "replay_all"}, "cache_mode"),
    ({"budget_per_hour": "1"}, "budget_per_hour"),  # a typo is an error
])
def test_bad_llm_config_is_rejected(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        LLMConfig.model_validate(settings)


def test_build_provider_needs_a_known_endpoint_and_an_offline_model() -> None:
    with pytest.raises(ValueError, match="needs the agent's offline model"):
        build_provider(LLMConfig())
    priced = LLMConfig(endpoints={"x": EndpointConfig(kind="openai", model="m")},
                       prices={"m": Price(input=Decimal(1), output=Decimal(2))})
    with pytest.raises(ValueError, match="unknown LLM endpoint 'y'"):
        build_provider(priced, OFFLINE, endpoint="y")


@pytest.mark.parametrize(("action", "conviction"), [("BUY", -0.5), ("SELL", 0.5), ("HOLD", 0.1), ("ABSTAIN", -0.1)])
def test_a_decision_conviction_must_match_its_action(action: str, conviction: float) -> None:
    with pytest.raises(ValidationError, match="does not match action"):
        Decision(action=action, conviction=conviction, confidence=0.5, reasoning="", model="m")  # type: ignore[arg-type]
