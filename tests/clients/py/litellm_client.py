"""litellm as a client library: litellm.acompletion(stream=True) through its openai/, anthropic/
or gemini/ provider (RELAY_LITELLM), text, then a get_weather call and its tool message."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download

import litellm
from _common import BASE, KEY, MODEL, PROMPT, TOOL_OUTPUT, TOOL_PROMPT, WEATHER, Clock, main

PROVIDER = os.environ.get("RELAY_LITELLM", "openai")
API_BASE = {"openai": f"{BASE}/v1", "anthropic": BASE, "gemini": f"{BASE}/v1beta"}[PROVIDER]
TOOLS = [{"type": "function", "function": WEATHER}]


async def turn(messages: list[dict[str, Any]]) -> dict[str, Any]:
    clock, text, calls = Clock(), "", {}  # type: ignore[var-annotated]
    stream = await litellm.acompletion(
        model=f"{PROVIDER}/{MODEL}", api_base=API_BASE, api_key=KEY, messages=messages, tools=TOOLS,
        stream=True, max_tokens=256,
    )  # fmt: skip
    async for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        if delta.content:
            clock.delta()
            text += delta.content
        for tc in delta.tool_calls or []:
            clock.delta()
            call = calls.setdefault(tc.index or 0, {"id": "", "name": "", "arguments": ""})
            call["id"] = tc.id or call["id"]
            call["name"] += tc.function.name or ""
            call["arguments"] += tc.function.arguments or ""
    return {"text": text, "raw_calls": list(calls.values()), **clock.end()}


async def tool_case() -> dict[str, Any]:
    history: list[dict[str, Any]] = [{"role": "user", "content": TOOL_PROMPT}]
    first = await turn(history)
    calls = first["raw_calls"]
    history.append({
        "role": "assistant", "content": first["text"] or None,
        "tool_calls": [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                       for c in calls],
    })  # fmt: skip
    history += [{"role": "tool", "tool_call_id": c["id"], "content": TOOL_OUTPUT} for c in calls]
    answer = await turn(history)
    return {**answer, "calls": [{"name": c["name"], "args": json.loads(c["arguments"])} for c in calls]}


asyncio.run(main(lambda: turn([{"role": "user", "content": PROMPT}]), tool_case))
