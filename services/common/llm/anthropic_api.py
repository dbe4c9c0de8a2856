"""Anthropic (Messages API, official `anthropic` SDK): the answer is the input of one
forced tool whose input schema is the answer schema."""

from __future__ import annotations

import anthropic

from .config import EndpointConfig, LLMConfig
from .decision import DecisionRequest
from .live import ANSWER_SCHEMA, FORMAT_INSTRUCTIONS, TOOL_NAME, LiveProvider, Reply

TOOL = {
    "name": TOOL_NAME,
    "description": "Record your trading decision for the symbol.",
    "input_schema": ANSWER_SCHEMA,
}


class AnthropicProvider(LiveProvider):
    sdk = anthropic

    def __init__(self, name: str, endpoint: EndpointConfig, config: LLMConfig, api_key: str | None) -> None:
        super().__init__(name, endpoint, config, api_key)
        # Retries are ours (one policy for every provider, counted in the metrics).
        self.client = anthropic.AsyncAnthropic(api_key=api_key or "unset", base_url=endpoint.base_url,
                                               max_retries=0)

    async def _send(self, request: DecisionRequest, timeout_s: float) -> Reply:
        message = await self.client.messages.create(
            model=self.endpoint.model,
            max_tokens=self.endpoint.max_tokens,
            system=f"{request.system}\n\n{FORMAT_INSTRUCTIONS} Give it by calling the {TOOL_NAME} tool.",
            messages=[{"role": "user", "content": request.prompt}],
            tools=[TOOL],
            tool_choice={"type": "tool", "name": TOOL_NAME, "disable_parallel_tool_use": True},
            timeout=timeout_s,
        )
        tool_input = next((block.input for block in message.content
                           if block.type == "tool_use" and block.name == TOOL_NAME), None)
        refusal = None
        if message.stop_reason == "refusal":
            text = " ".join(block.text for block in message.content if block.type == "text")
            refusal = text or "stop_reason refusal"
        return Reply(answer=tool_input, refusal=refusal, input_tokens=message.usage.input_tokens,
                     output_tokens=message.usage.output_tokens, stop=str(message.stop_reason))

    async def aclose(self) -> None:
        await self.client.close()
