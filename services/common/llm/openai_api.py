"""OpenAI and any OpenAI-compatible endpoint (DeepSeek, Groq, Ollama, vLLM...) through the
official `openai` SDK's chat completions: strict structured outputs (a JSON schema),
JSON mode, or JSON parsed from plain text, by the endpoint's `output`."""

from __future__ import annotations

from typing import Any

import openai

from .config import EndpointConfig, LLMConfig
from .decision import DecisionRequest
from .live import ANSWER_SCHEMA, FORMAT_INSTRUCTIONS, LiveProvider, Reply

RESPONSE_FORMATS: dict[str, Any] = {
    "json_schema": {"type": "json_schema",
                    "json_schema": {"name": "trading_decision", "schema": ANSWER_SCHEMA, "strict": True}},
    "json_object": {"type": "json_object"},
    "text": openai.omit,
}


class OpenAIProvider(LiveProvider):
    sdk = openai

    def __init__(self, name: str, endpoint: EndpointConfig, config: LLMConfig, api_key: str | None) -> None:
        super().__init__(name, endpoint, config, api_key)
        # Retries are ours (one policy for every provider, counted in the metrics). A local
        # server without keys still needs a non-empty key for the SDK.
        self.client = openai.AsyncOpenAI(api_key=api_key or "unset", base_url=endpoint.base_url, max_retries=0)

    async def _send(self, request: DecisionRequest, timeout_s: float) -> Reply:
        completion = await self.client.chat.completions.create(
            model=self.endpoint.model,
            messages=[{"role": "system", "content": f"{request.system}\n\n{FORMAT_INSTRUCTIONS}"},
                      {"role": "user", "content": request.prompt}],
            response_format=RESPONSE_FORMATS[self.endpoint.output or "json_schema"],
            **self._max_tokens(),
            timeout=timeout_s,
        )
        usage = completion.usage
        tokens_in, tokens_out = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        if not completion.choices:
            return Reply(None, None, tokens_in, tokens_out, stop="no choices")
        choice = completion.choices[0]
        refusal = choice.message.refusal
        if refusal is None and choice.finish_reason == "content_filter":
            refusal = "finish_reason content_filter"
        return Reply(answer=choice.message.content, refusal=refusal, input_tokens=tokens_in,
                     output_tokens=tokens_out, stop=str(choice.finish_reason))

    def _max_tokens(self) -> dict[str, int]:
        # OpenAI deprecated max_tokens; compatible servers (Ollama, vLLM, older APIs) know only it.
        key = "max_completion_tokens" if self.endpoint.kind == "openai" else "max_tokens"
        return {key: self.endpoint.max_tokens}

    async def aclose(self) -> None:
        await self.client.close()
