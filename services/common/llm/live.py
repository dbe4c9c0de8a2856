"""What every live (network) provider shares: the answer schema, the deadline, bounded
retries with backoff on 429 / 5xx / connection errors, parsing into a Decision, the cost.

A subclass only sends one request with its SDK (`_send`) and says which SDK errors mean
what. A live provider never raises: any failure is an ABSTAIN with `error` and an outcome
label (the guard decides whether the fallback answers instead).
"""

from __future__ import annotations

import abc
import asyncio
import email.utils
import json
import random
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from . import metrics
from .config import EndpointConfig, LLMConfig
from .decision import Answer, Decision, DecisionRequest

TOOL_NAME = "record_decision"
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string", "description": "Why, in a few sentences, citing the data given."},
        "action": {"type": "string", "enum": ["BUY", "SELL", "HOLD", "ABSTAIN"],
                   "description": "ABSTAIN when the data is not enough to decide."},
        "confidence": {"type": "number", "description": "How sure, from 0 (not at all) to 1 (certain)."},
    },
    "required": ["reasoning", "action", "confidence"],
    "additionalProperties": False,
}
FORMAT_INSTRUCTIONS = (
    'Answer with one JSON object only, no other text: {"reasoning": "<why>", '
    '"action": "BUY" | "SELL" | "HOLD" | "ABSTAIN", "confidence": <number from 0 to 1>}.'
)
RETRYABLE_STATUS = {408, 409, 429}  # and every 5xx
ANSWERED = {"ok", "abstain", "parse_error", "refusal"}  # outcomes that are the model's own answer


@dataclass
class Reply:
    """One model response, reduced to what a decision needs."""

    answer: dict[str, Any] | str | None  # the structured answer (a tool input) or JSON text
    refusal: str | None
    input_tokens: int
    output_tokens: int
    stop: str  # stop_reason / finish_reason, for error messages


class CallFailed(Exception):
    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class LiveProvider(abc.ABC):
    sdk: Any  # the SDK module: its APIStatusError / APIConnectionError / APITimeoutError

    def __init__(self, name: str, endpoint: EndpointConfig, config: LLMConfig, api_key: str | None) -> None:
        self.name = name  # the endpoint's name in [llm.endpoints]
        self.endpoint = endpoint
        self.model = f"{name}:{endpoint.model}"
        self.config = config
        self.api_key = api_key
        price = config.prices[endpoint.model]
        self.price_in, self.price_out = price.input, price.output
        self.random = random.Random()

    @abc.abstractmethod
    async def _send(self, request: DecisionRequest, timeout_s: float) -> Reply:
        """One request with the SDK, within timeout_s; SDK errors propagate."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the SDK's HTTP client."""

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        return (input_tokens * self.price_in + output_tokens * self.price_out) / 1_000_000

    async def decide_with_outcome(self, request: DecisionRequest) -> tuple[Decision, str]:
        start = time.perf_counter()
        if self.api_key is None:
            error = f"no API key: environment variable {self.endpoint.api_key_env} is not set"
            return Decision.abstain(self.model, error), "no_key"
        try:
            reply = await asyncio.wait_for(self._send_with_retries(request, start + request.timeout_s),
                                           request.timeout_s)
        except TimeoutError:
            reply = CallFailed("timeout", f"timeout after {request.timeout_s}s")
        except CallFailed as e:
            reply = e
        latency_ms = round((time.perf_counter() - start) * 1000, 3)
        if isinstance(reply, CallFailed):
            return Decision.abstain(self.model, str(reply), latency_ms=latency_ms), reply.outcome
        usage = {"latency_ms": latency_ms, "input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
                 "cost_usd": float(self.cost(reply.input_tokens, reply.output_tokens))}
        if reply.refusal is not None:
            return Decision.abstain(self.model, f"refused: {reply.refusal}"[:500], **usage), "refusal"
        try:
            answer = parse_answer(reply.answer)
        except (ValueError, TypeError) as e:  # json and pydantic errors are ValueErrors
            error = f"unparsable answer (stop: {reply.stop}): {_short(e)}"
            return Decision.abstain(self.model, error, **usage), "parse_error"
        decision = Decision.from_answer(answer, self.model, **usage)
        return decision, "abstain" if answer.action == "ABSTAIN" else "ok"

    async def _send_with_retries(self, request: DecisionRequest, deadline: float) -> Reply:
        retries = 0
        while True:
            try:
                return await self._send(request, max(0.001, deadline - time.perf_counter()))
            except self.sdk.APITimeoutError as e:
                raise CallFailed("timeout", f"timeout after {request.timeout_s}s") from e
            except self.sdk.APIStatusError as e:
                status = e.status_code
                failure = CallFailed("http_error", f"HTTP {status}: {_short(e)}")
                if status not in RETRYABLE_STATUS and status < 500:
                    raise failure from e
                delay, reason = retry_after(e.response.headers), str(status)
            except self.sdk.APIConnectionError as e:
                failure = CallFailed("connection_error", f"connection error: {_short(e)}")
                delay, reason = None, "connection"
            except Exception as e:  # e.g. a response the SDK cannot read: not worth a retry
                raise CallFailed("http_error", f"bad response: {_short(e)}") from e
            if retries >= self.config.max_retries:
                raise CallFailed(failure.outcome, f"{failure} (after {retries} retries)")
            if delay is None:  # exponential backoff with full jitter
                cap = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2**retries)
                delay = self.random.uniform(0, cap)
            if time.perf_counter() + delay >= deadline:
                raise CallFailed(failure.outcome, f"{failure}; retry in {delay:.2f}s would pass the "
                                                  f"{request.timeout_s}s deadline")
            retries += 1
            metrics.RETRIES.labels(self.name, self.endpoint.model, reason).inc()
            await asyncio.sleep(delay)


def retry_after(headers: Any) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, `retry-after` (seconds or a date)."""
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


def parse_answer(raw: dict[str, Any] | str | None) -> Answer:
    """The model's answer, schema-checked; anything else raises (-> ABSTAIN, never a guess)."""
    if raw is None:
        raise ValueError("no answer in the response")
    if isinstance(raw, str):
        raw = json.loads(_json_object_text(raw))
    if not isinstance(raw, dict):
        raise TypeError(f"answer is a JSON {type(raw).__name__}, not an object")
    return Answer.model_validate(raw, strict=True)


def _json_object_text(text: str) -> str:
    # Plain-text models often wrap the object in prose or a ```json fence: take the outermost {...}.
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError(f"no JSON object in the answer: {text[:200]!r}")
    return text[start:end + 1]


def _short(error: Exception, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."
