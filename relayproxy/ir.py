"""The canonical chat model shared by the codecs: only what the three protocols share.

Requests and responses decode into these types and encode out of them, so N protocols need N
decoders and N encoders rather than N*(N-1) converters, and billing reads usage in one place.
Streams are a flat sequence of events (see ``StreamEvent``), cumulative where the providers are
(usage: the last snapshot wins), with tool calls keyed by their ordinal in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "ChatRequest",
    "ChatResponse",
    "FinishReason",
    "Image",
    "Message",
    "MessageStart",
    "MessageStop",
    "Part",
    "Reasoning",
    "StreamEvent",
    "StreamFailed",
    "Text",
    "TextDelta",
    "Thinking",
    "ThinkingDelta",
    "ThinkingSignature",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStart",
    "ToolChoice",
    "ToolResult",
    "Usage",
    "UsageUpdate",
]


@dataclass(slots=True, frozen=True)
class Usage:
    """Token counts normalised to the meanings a usage record gives them.

    ``input_tokens`` counts every prompt token (cache reads and writes included);
    ``cached_input_tokens`` is the part of it read from cache; ``output_tokens`` counts every
    generated token (reasoning included); ``reasoning_tokens`` is the part of it spent reasoning.
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


class FinishReason(StrEnum):
    """Why generation stopped, in OpenAI's vocabulary (the smallest common one)."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"


# -- content parts -------------------------------------------------------------------------------


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Image:
    """An image: inline base64 ``data`` with its ``mime_type``, or a ``url`` (http(s) or data:)."""

    mime_type: str | None = None
    data: str | None = None
    url: str | None = None


@dataclass(slots=True)
class Thinking:
    """Reasoning text (Anthropic thinking, Gemini thought, DeepSeek/Kimi reasoning_content).

    ``signature`` is the provider's opaque proof (Anthropic) to be replayed unchanged;
    ``redacted`` holds Anthropic's encrypted ``redacted_thinking`` data (then ``text`` is empty).
    """

    text: str
    signature: str | None = None
    redacted: str | None = None


@dataclass(slots=True)
class ToolCall:
    """A function call made by the model. ``arguments`` is the JSON object as a dict.

    ``signature`` is Gemini's ``thoughtSignature`` riding on this call, which Gemini 3 requires
    back on later turns; codecs that cannot carry it natively fold it into the call ``id``.
    """

    id: str
    name: str
    arguments: dict[str, Any]
    signature: str | None = None


@dataclass(slots=True)
class ToolResult:
    """The result of a tool call, sent back by the client on a user turn."""

    call_id: str
    content: str | list[Text | Image]
    name: str | None = None  # Gemini needs it; codecs look it up from the history when absent
    is_error: bool = False


Part = Text | Image | Thinking | ToolCall | ToolResult


@dataclass(slots=True)
class Message:
    """One turn: ``user`` (text, images, tool results) or ``assistant`` (text, thinking, calls)."""

    role: str  # "user" | "assistant"
    parts: list[Part]


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(slots=True)
class ToolChoice:
    """``auto`` | ``none`` | ``required`` (some tool) | ``tool`` (the one named)."""

    mode: str = "auto"
    name: str | None = None
    parallel: bool | None = None  # False: at most one call per turn


@dataclass(slots=True)
class Reasoning:
    """Reasoning controls: an effort word and/or a token budget, and whether to return thoughts."""

    effort: str | None = None  # none | minimal | low | medium | high | xhigh | max
    budget_tokens: int | None = None
    include_thoughts: bool = False


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[Message]
    system: str | None = None
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    reasoning: Reasoning | None = None
    json_schema: dict[str, Any] | None = None  # structured output: a JSON Schema
    json_mode: bool = False  # "some JSON object", no schema
    stream: bool = False
    include_usage: bool = False  # OpenAI client asked for the trailing usage chunk
    user: str | None = None
    # OpenAI's prompt-cache routing key (Responses and Chat both take ``prompt_cache_key``);
    # upstreams without one (Anthropic's breakpoints, Gemini's implicit cache) drop it.
    prompt_cache_key: str | None = None
    # Responses clients: built-in tools (run by the provider, or typed other than function) the
    # canonical model cannot carry. A passthrough forwards them in the client's body; a translation
    # drops web search and refuses the rest (policy/plan.py).
    builtin_tools: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ChatResponse:
    id: str
    model: str
    parts: list[Part]  # Text, Thinking and ToolCall, in order
    finish: FinishReason = FinishReason.STOP
    usage: Usage | None = None
    stop_sequence: str | None = None


# -- stream events ------------------------------------------------------------------------------


@dataclass(slots=True)
class MessageStart:
    """First event of every stream. ``usage`` carries the prompt counts when known this early."""

    id: str
    model: str
    usage: Usage | None = None


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str


@dataclass(slots=True)
class ThinkingSignature:
    """The signature closing the current thinking block (Anthropic ``signature_delta``)."""

    signature: str


@dataclass(slots=True)
class ToolCallStart:
    """A tool call opens. ``index`` counts calls in the message (0, 1, ...); ``id`` is always set
    (decoders synthesize one when the upstream has none)."""

    index: int
    id: str
    name: str
    signature: str | None = None


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of the call's arguments as JSON text; concatenated they form one JSON object.
    A complete call (Gemini) arrives as one delta holding the whole object."""

    index: int
    arguments: str


@dataclass(slots=True)
class UsageUpdate:
    """A cumulative usage snapshot: the last one wins, never sum them."""

    usage: Usage


@dataclass(slots=True)
class MessageStop:
    """The upstream finished normally. Emitted once, after the last content and usage events."""

    finish: FinishReason
    stop_sequence: str | None = None


@dataclass(slots=True)
class StreamFailed:
    """The upstream reported an error inside the stream. ``status`` is HTTP-like (e.g. 503, 429)."""

    status: int
    message: str
    type: str | None = None


StreamEvent = (
    MessageStart
    | TextDelta
    | ThinkingDelta
    | ThinkingSignature
    | ToolCallStart
    | ToolCallDelta
    | UsageUpdate
    | MessageStop
    | StreamFailed
)
