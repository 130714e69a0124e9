"""The clients of the matrix: how each is launched, its README label, and its known failures."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.clients.harness import JS, PY, UPSTREAMS, Launch, need_clients_venv, need_node, node_major
from tests.e2e.conftest import Gateway


def node_script(script: str, **env: str) -> Launch:
    def launch(gw: Gateway, key: str, model: str, work: Path) -> tuple[list[str], dict[str, str], Path]:
        return [need_node(), str(JS / script)], dict(env), work

    return launch


def py_script(script: str, **env: str) -> Launch:
    def launch(gw: Gateway, key: str, model: str, work: Path) -> tuple[list[str], dict[str, str], Path]:
        return [str(need_clients_venv()), str(PY / script)], dict(env), work

    return launch


#: id -> (README label, launch, minimum Node major or 0). The SDKs and libraries (test_sdks.py).
SDKS: dict[str, tuple[str, Launch, int]] = {
    "ts-openai-chat": ("`openai` 6.49.0 (TS), Chat Completions", node_script("openai_chat.mjs"), 0),
    "ts-openai-responses": ("`openai` 6.49.0 (TS), Responses", node_script("openai_responses.mjs"), 0),
    "ts-anthropic": ("`@anthropic-ai/sdk` 1.17.0", node_script("anthropic.mjs"), 0),
    "ts-genai": ("`@google/genai` 2.32.0", node_script("genai.mjs"), 20),
    "aisdk-openai": (
        "`ai` 6.0.333 + `@ai-sdk/openai` 3.0.141, Responses (`store: false`)",
        node_script("aisdk.mjs", RELAY_AISDK="openai"),
        0,
    ),
    "aisdk-openai-stored": (
        "`ai` + `@ai-sdk/openai`, Responses with the SDK's default `store: true`",
        node_script("aisdk.mjs", RELAY_AISDK="openai-stored"),
        0,
    ),
    "aisdk-openai-chat": ("`ai` + `@ai-sdk/openai` `.chat()`", node_script("aisdk.mjs", RELAY_AISDK="openai-chat"), 0),
    "aisdk-anthropic": ("`ai` + `@ai-sdk/anthropic` 3.0.140", node_script("aisdk.mjs", RELAY_AISDK="anthropic"), 0),
    "aisdk-google": ("`ai` + `@ai-sdk/google` 3.0.141", node_script("aisdk.mjs", RELAY_AISDK="google"), 0),
    "py-agents": ("`openai-agents` 0.24.0, Responses", py_script("agents_sdk.py"), 0),
    "py-agents-chat": (
        "`openai-agents` 0.24.0, Chat Completions",
        py_script("agents_sdk.py", RELAY_AGENTS_API="chat"),
        0,
    ),
    "py-litellm-openai": ("`litellm` 1.110.2, `openai/`", py_script("litellm_client.py", RELAY_LITELLM="openai"), 0),
    "py-litellm-anthropic": (
        "`litellm` 1.110.2, `anthropic/`",
        py_script("litellm_client.py", RELAY_LITELLM="anthropic"),
        0,
    ),
    "py-litellm-gemini": ("`litellm` 1.110.2, `gemini/`", py_script("litellm_client.py", RELAY_LITELLM="gemini"), 0),
    "py-langchain": ("`langchain-openai` 1.8.1, Chat Completions", py_script("langchain_client.py"), 0),
    "py-langchain-responses": (
        "`langchain-openai` 1.8.1, Responses",
        py_script("langchain_client.py", RELAY_LANGCHAIN_API="responses"),
        0,
    ),
}

STORED = (
    "the AI SDK's OpenAI Responses provider defaults to store: true and then sends an earlier streamed "
    "assistant text as only {type: item_reference, id} (captured: input = [user, item_reference msg_…, "
    "function_call, function_call_output]); the id is fixed by output_item.added before the text exists, "
    "so no id the gateway mints can carry it, and a stateless gateway has nothing to look it up in: a 400 "
    "saying to set store: false (providerOptions.openai.store = false, the aisdk-openai row, sends the items)"
)
#: (client id, test kind) -> reason the cell is expected to fail on every upstream.
XFAIL: dict[tuple[str, str], str] = {
    ("aisdk-openai-stored", "tool"): STORED,
    ("aisdk-openai-stored", "usage"): STORED,
    ("aisdk-openai-stored", "stream"): STORED,
}


def cells(table: dict[str, tuple[str, Launch, int]], kind: str) -> list[Any]:
    """pytest params "client/up" for one test kind, xfail-marked where XFAIL says, skipped where
    the installed Node is older than the client's engines field."""
    params = []
    for client, (_, _, min_node) in table.items():
        marks: list[Any] = []
        if (client, kind) in XFAIL:
            marks.append(pytest.mark.xfail(reason=XFAIL[(client, kind)], strict=True))
        if min_node and node_too_old(min_node):
            marks.append(pytest.mark.skip(reason=f"needs Node >= {min_node} (engines); this Node is older"))
        params += [pytest.param(f"{client}/{up}", marks=marks, id=f"{client}/{up}") for up in UPSTREAMS]
    return params


def node_too_old(min_node: int) -> bool:
    try:
        return node_major() < min_node
    except (OSError, ValueError):
        return False  # no node: the run itself reports it


def launches(table: dict[str, tuple[str, Launch, int]]) -> list[tuple[str, str, Launch]]:
    """The runs of a table (RELAYPROXY_CLIENTS_ONLY=id,id narrows them while working on one)."""
    only = {c for c in os.environ.get("RELAYPROXY_CLIENTS_ONLY", "").split(",") if c}
    wanted: Callable[[str, int], bool] = lambda c, n: (not only or c in only) and not (n and node_too_old(n))  # noqa: E731
    return [(client, up, launch) for client, (_, launch, n) in table.items() if wanted(client, n) for up in UPSTREAMS]
