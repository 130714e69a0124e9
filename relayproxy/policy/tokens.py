"""A local, documented estimate of a request's input tokens.

Used where the upstream cannot count (OpenAI-protocol providers have no count endpoint) and to
size credit holds before a request is sent. It is deliberately generous: about one token per
3.5 UTF-8 bytes of text (English prose runs nearer 4 bytes per token; code and non-Latin scripts
nearer 2.5-3), plus small per-message and per-tool overheads, and a flat 1,000 tokens per image
(Anthropic's 1092x1092 image is ~1,600 tokens; OpenAI's low-detail image is 85). It is never
used to bill: charges come only from the usage the upstream reports.
"""

from __future__ import annotations

import orjson

from relayproxy import ir

__all__ = ["estimate_input_tokens"]

_BYTES_PER_TOKEN = 3.5
_PER_MESSAGE = 4
_PER_TOOL = 10
_PER_IMAGE = 1000


def estimate_input_tokens(req: ir.ChatRequest) -> int:
    """Estimated prompt tokens of ``req`` (system, messages, tool declarations)."""
    size = len((req.system or "").encode())
    extra = _PER_MESSAGE
    for msg in req.messages:
        extra += _PER_MESSAGE
        for part in msg.parts:
            part_size, part_extra = _part_cost(part)
            size += part_size
            extra += part_extra
    for tool in req.tools:
        size += len(tool.name) + len((tool.description or "").encode()) + len(orjson.dumps(tool.parameters))
        extra += _PER_TOOL
    return int(size / _BYTES_PER_TOKEN) + 1 + extra


def _part_cost(part: ir.Part) -> tuple[int, int]:
    """(text bytes, fixed token overhead) of one content part."""
    if isinstance(part, ir.Text):
        return len(part.text.encode()), 0
    if isinstance(part, ir.Thinking):
        return len(part.text.encode()) + len(part.redacted or ""), 0
    if isinstance(part, ir.ToolCall):
        return len(part.name) + len(orjson.dumps(part.arguments)), _PER_MESSAGE
    if isinstance(part, ir.ToolResult):
        if isinstance(part.content, str):
            return len(part.content.encode()), _PER_MESSAGE
        return sum(_part_cost(p)[0] for p in part.content), _PER_MESSAGE + sum(_part_cost(p)[1] for p in part.content)
    return 0, _PER_IMAGE
