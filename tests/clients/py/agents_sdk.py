"""openai-agents: an Agent with a function tool, Runner.run_streamed, on the Responses model (its
default) or the Chat Completions one (RELAY_AGENTS_API=chat); tracing off."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from _common import BASE, KEY, MODEL, PROMPT, TOOL_OUTPUT, TOOL_PROMPT, Clock, main
from agents import Agent, OpenAIChatCompletionsModel, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

set_tracing_disabled(True)
client = AsyncOpenAI(base_url=f"{BASE}/v1", api_key=KEY, max_retries=0)
chat = os.environ.get("RELAY_AGENTS_API") == "chat"
model = OpenAIChatCompletionsModel(MODEL, client) if chat else OpenAIResponsesModel(MODEL, client)


@function_tool
def get_weather(city: str) -> str:
    """Weather for a city."""
    return TOOL_OUTPUT


async def run(prompt: str) -> dict[str, Any]:
    agent = Agent(name="relay", instructions="Be brief.", tools=[get_weather], model=model)
    result = Runner.run_streamed(agent, prompt)
    clock, calls, text = Clock(), [], ""
    async for event in result.stream_events():
        if event.type == "raw_response_event" and event.data.type in (
            "response.output_text.delta", "response.function_call_arguments.delta"
        ):  # fmt: skip
            if event.data.type == "response.output_text.delta":
                text += event.data.delta
            clock.delta()
        if event.type == "run_item_stream_event" and event.name == "tool_called":
            raw = event.item.raw_item
            calls.append({"name": raw.name, "args": json.loads(raw.arguments)})
        if event.type == "run_item_stream_event" and event.name == "tool_output":
            clock, text = Clock(), ""  # time the answer after the tool result
    return {"text": str(result.final_output), "streamed_text": text, "calls": calls, **clock.end()}


asyncio.run(main(lambda: run(PROMPT), lambda: run(TOOL_PROMPT)))
