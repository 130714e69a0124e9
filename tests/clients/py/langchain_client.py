"""langchain-openai ChatOpenAI.astream with bind_tools, on Chat Completions or (RELAY_LANGCHAIN_API=
responses) the Responses API: text, then a get_weather call and its ToolMessage."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from _common import BASE, KEY, MODEL, PROMPT, TOOL_OUTPUT, TOOL_PROMPT, WEATHER, Clock, main
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

responses = os.environ.get("RELAY_LANGCHAIN_API") == "responses"
llm = ChatOpenAI(model=MODEL, base_url=f"{BASE}/v1", api_key=KEY, max_retries=0, use_responses_api=responses)
bound = llm.bind_tools([{"type": "function", "function": WEATHER}])


async def turn(messages: list[BaseMessage]) -> tuple[AIMessageChunk, dict[str, Any]]:
    clock, full = Clock(), None
    async for chunk in bound.astream(messages):
        if chunk.text or chunk.tool_call_chunks:
            clock.delta()
        full = chunk if full is None else full + chunk
    assert isinstance(full, AIMessageChunk)
    return full, {"text": full.text, **clock.end()}


async def text_case() -> dict[str, Any]:
    return (await turn([HumanMessage(PROMPT)]))[1]


async def tool_case() -> dict[str, Any]:
    history: list[BaseMessage] = [HumanMessage(TOOL_PROMPT)]
    first, _ = await turn(history)
    history.append(first)
    history += [ToolMessage(TOOL_OUTPUT, tool_call_id=c["id"]) for c in first.tool_calls]
    _, answer = await turn(history)
    return {**answer, "calls": [{"name": c["name"], "args": c["args"]} for c in first.tool_calls]}


asyncio.run(main(text_case, tool_case))
