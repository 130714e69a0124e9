"""Model lists in each protocol's shape (protocols.md §5). ``GET /v1/models`` is shared by the
three SDKs; the router tells them apart by headers, and these render the answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from relayproxy.config.settings import ModelConfig

__all__ = ["MODEL_ENTRY", "MODEL_LIST"]

_EPOCH = "2025-01-01T00:00:00Z"  # Anthropic's SDK parses created_at into a datetime: it must be one


def _openai_entry(m: ModelConfig) -> dict[str, Any]:
    """OpenAI's entry plus the limits agents time context compaction by (extras the SDK keeps)."""
    entry: dict[str, Any] = {"id": m.name, "object": "model", "created": 0, "owned_by": m.provider}
    if m.context_length is not None:
        entry["context_length"] = m.context_length
    entry["max_output_tokens"] = m.max_output_tokens
    return entry


def _anthropic_entry(m: ModelConfig) -> dict[str, Any]:
    return {
        "type": "model",
        "id": m.name,
        "display_name": m.name,
        "created_at": _EPOCH,
        "max_tokens": m.max_output_tokens,
    }


def _gemini_entry(m: ModelConfig) -> dict[str, Any]:
    return {
        "name": f"models/{m.name}",
        "version": "001",
        "displayName": m.name,
        "description": f"{m.name} served by relayproxy through {m.provider}",
        "inputTokenLimit": m.context_length or 1_048_576,
        "outputTokenLimit": m.max_output_tokens,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
    }


def _openai_list(models: Sequence[ModelConfig]) -> dict[str, Any]:
    return {"object": "list", "data": [_openai_entry(m) for m in models]}


def _anthropic_list(models: Sequence[ModelConfig]) -> dict[str, Any]:
    data = [_anthropic_entry(m) for m in models]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"data": data, "has_more": False, "first_id": first, "last_id": last}


def _gemini_list(models: Sequence[ModelConfig]) -> dict[str, Any]:
    return {"models": [_gemini_entry(m) for m in models], "nextPageToken": ""}


MODEL_LIST: dict[str, Callable[[Sequence[ModelConfig]], dict[str, Any]]] = {
    "openai": _openai_list,
    "openai_responses": _openai_list,
    "anthropic": _anthropic_list,
    "gemini": _gemini_list,
}
MODEL_ENTRY: dict[str, Callable[[ModelConfig], dict[str, Any]]] = {
    "openai": _openai_entry,
    "openai_responses": _openai_entry,
    "anthropic": _anthropic_entry,
    "gemini": _gemini_entry,
}
