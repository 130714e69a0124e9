"""OpenAI Chat Completions streams: the chunk decoder, the chunk encoder and the passthrough tap.

Theory of operation
-------------------
An OpenAI-protocol stream is a run of ``data: <chunk JSON>`` events closed by ``data: [DONE]``.
Each chunk carries at most one choice (we only ever ask for ``n = 1``) whose ``delta`` holds the new
fragment only, a ``finish_reason`` on a late chunk, and usage either in a trailing ``choices: []``
chunk (OpenAI, DeepSeek) or inside ``choices[0].usage`` (Moonshot).

``ChatStreamDecoder`` (upstream -> IR) is a three-phase machine (``_Phase``): OPEN until ``[DONE]``
(MessageStop) or an error chunk (StreamFailed), after which everything is ignored. Tool-call
fragments are keyed by their upstream ``index``; a fragment without one (Moonshot) continues the
current call unless it brings a new id. The finish reason is held until ``[DONE]``, because usage
arrives between the two and MessageStop must come after the last UsageUpdate.

``ChatStreamEncoder`` (IR -> OpenAI client) writes what the openai SDK's ``.stream()`` helper can
accumulate: the helper concatenates every string field it sees twice, so ``role`` goes only in the
first chunk and a call's ``id``/``type``/``name`` only in its first fragment, and every tool delta
carries ``index``. Finish and the optional usage chunk are written at MessageStop, whatever order
the upstream protocol produced them in.

``StreamTap`` reads a same-protocol stream that passes through untouched.

The wire vocabulary both halves need (usage, finish reasons, ids, the error shape) lives here, the
lower of the two modules; ``openai_chat`` imports it.
"""

from __future__ import annotations

import secrets
from enum import Enum
from typing import Any, Literal

import orjson

from relayproxy import ir
from relayproxy.codecs.shared import MINIMAX_STATUS, count, is_int, str_or_empty
from relayproxy.errors import RelayError, UpstreamStatusError
from relayproxy.sse import SSEEvent, encode_event

__all__ = [
    "DONE",
    "ChatStreamDecoder",
    "ChatStreamEncoder",
    "StreamTap",
    "chat_id",
    "decode_finish",
    "decode_usage",
    "encode_error",
    "encode_usage",
    "fold_signature",
    "minimax_error",
    "reasoning_texts",
    "stream_error_body",
    "synth_call_id",
]

DONE = b"[DONE]"
_DONE_EVENT = b"data: [DONE]\n\n"

_FINISH = {
    "stop": ir.FinishReason.STOP,
    "length": ir.FinishReason.LENGTH,
    "tool_calls": ir.FinishReason.TOOL_CALLS,
    "function_call": ir.FinishReason.TOOL_CALLS,  # legacy
    "content_filter": ir.FinishReason.CONTENT_FILTER,
    # DeepSeek: generation was cut off by the provider; the answer is truncated, as with "length".
    "insufficient_system_resource": ir.FinishReason.LENGTH,
}
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "requests": 429,
    "tokens": 429,
    "server_error": 500,
    "service_unavailable_error": 503,
    "overloaded_error": 503,
}


# -- wire vocabulary shared with the unary side: usage, finish reasons, ids, errors ---------------


def decode_usage(usage: Any) -> ir.Usage | None:
    """OpenAI usage (and its DeepSeek/Moonshot variants) -> normalised Usage; None if absent."""
    if not isinstance(usage, dict):
        return None
    prompt = count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    # Moonshot puts cached_tokens at the top level; DeepSeek reports prompt_cache_hit_tokens.
    cached = cached or count(usage.get("cached_tokens")) or count(usage.get("prompt_cache_hit_tokens"))
    out_details = usage.get("completion_tokens_details")
    reasoning = count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    return ir.Usage(prompt, min(cached, prompt), count(usage.get("completion_tokens")), reasoning)


def encode_usage(usage: ir.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def decode_finish(reason: Any) -> ir.FinishReason | None:
    """An upstream ``finish_reason`` -> IR; None when absent. Unknown words count as STOP."""
    if not isinstance(reason, str) or not reason:
        return None
    return _FINISH.get(reason, ir.FinishReason.STOP)


def reasoning_texts(fields: dict[str, Any]) -> list[str]:
    """Reasoning text of a message or delta: DeepSeek/Kimi ``reasoning_content``, vLLM/OpenRouter
    ``reasoning``, MiniMax ``reasoning_details[].text`` (the first one present: OpenRouter sends
    ``reasoning`` and ``reasoning_details`` with the same text, which must not be doubled)."""
    for key in ("reasoning_content", "reasoning"):
        text = fields.get(key)
        if isinstance(text, str) and text:
            return [text]
    details = fields.get("reasoning_details")
    if not isinstance(details, list):
        return []
    return [d["text"] for d in details if isinstance(d, dict) and isinstance(d.get("text"), str) and d["text"]]


def minimax_error(body: dict[str, Any]) -> tuple[int, str] | None:
    """MiniMax reports errors as ``base_resp.status_code != 0`` inside an HTTP 200 body or chunk."""
    base = body.get("base_resp")
    code = base.get("status_code") if isinstance(base, dict) else None
    if not isinstance(code, int) or isinstance(code, bool) or code == 0 or not isinstance(base, dict):
        return None
    return MINIMAX_STATUS.get(code, 502), str(base.get("status_msg") or f"upstream error {code}")


def chat_id(upstream_id: str) -> str:
    """The ``chatcmpl-`` id an OpenAI client sees for an upstream message id."""
    if upstream_id.startswith("chatcmpl-"):
        return upstream_id
    return "chatcmpl-" + (upstream_id or secrets.token_hex(12))


def synth_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def fold_signature(call_id: str, signature: str | None) -> str:
    """Carry a Gemini thoughtSignature inside the call id, the only field an OpenAI client echoes.
    Example failure prevented: Gemini 3 rejects a replayed functionCall without its signature."""
    if not signature or signature.replace("+", "-").replace("/", "_").rstrip("=") in call_id:
        return call_id  # already inside (the Gemini codec's own ids carry it): folding twice only adds bytes
    return f"{call_id}~{signature}"


_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
_CODES = {
    401: "invalid_api_key",
    402: "insufficient_quota",
    404: "model_not_found",
    429: "rate_limit_exceeded",
}


def encode_error(err: RelayError) -> tuple[int, dict[str, Any]]:
    """An error in OpenAI's shape, so the openai SDK raises its matching class."""
    status = err.status
    if isinstance(err, UpstreamStatusError) and status < 500 and err.upstream_type:
        etype = err.upstream_type
    else:
        etype = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = _CODES.get(status) if err.status != 404 or err.kind == "model_not_found" else "not_found"
    param = getattr(err, "path", None)
    return status, {"error": {"message": err.message, "type": etype, "param": param, "code": code or err.kind}}


def stream_error_body(err: RelayError) -> dict[str, Any]:
    """The error object of an in-band stream error; 5xx read as ``server_error``, as OpenAI sends."""
    _, body = encode_error(err)
    body["error"]["type"] = "server_error" if err.status >= 500 else body["error"]["type"]
    return body


# -- decoder ------------------------------------------------------------------------------------


class _Phase(Enum):
    OPEN = "open"  # chunks may arrive
    DONE = "done"  # [DONE] seen and MessageStop emitted: anything after it is ignored
    FAILED = "failed"  # an error chunk became StreamFailed: anything after it is ignored


_OPEN = _Phase.OPEN  # looked up once per chunk: an Enum member lookup is not free


class ChatStreamDecoder:
    """OpenAI-protocol upstream SSE events -> IR stream events (see the module docstring)."""

    def __init__(self) -> None:
        self._phase = _Phase.OPEN
        self._started = False  # MessageStart emitted
        self._finish: ir.FinishReason | None = None  # held until [DONE]
        self._by_index: dict[int, int] = {}  # upstream tool-call index -> our ordinal
        self._call_ids: list[str] = []  # by ordinal; the last one is the current call

    def feed(self, ev: SSEEvent) -> list[ir.StreamEvent]:
        data = ev.data
        if self._phase is not _OPEN or not data or data.isspace():
            return []
        if data.startswith(DONE):
            return self._done()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._fail(502, "The upstream sent a stream event that is not JSON.", None)
        if type(chunk) is not dict:
            return self._fail(502, "The upstream sent a stream event that is not a JSON object.", None)
        if "error" in chunk or "base_resp" in chunk:
            failure = _chunk_error(chunk)
            if failure is not None:
                return self._fail(*failure)
        if self._started:
            return self._read(chunk)
        return self._start(chunk) + self._read(chunk)

    def close(self) -> list[ir.StreamEvent]:
        # A stream that ends without [DONE] is incomplete, even after a finish_reason: no MessageStop.
        return []

    def _start(self, chunk: dict[str, Any]) -> list[ir.StreamEvent]:
        if self._started:
            return []
        self._started = True
        rid, model = chunk.get("id"), chunk.get("model")
        rid = rid if isinstance(rid, str) and rid else "chatcmpl-" + secrets.token_hex(12)
        return [ir.MessageStart(rid, model if isinstance(model, str) else "")]

    def _done(self) -> list[ir.StreamEvent]:
        self._phase = _Phase.DONE
        finish = self._finish or ir.FinishReason.STOP
        if finish is ir.FinishReason.STOP and self._call_ids:
            # Example failure prevented: OpenAI reports "stop" for a forced tool_choice; an agent
            # loop on the client side (Anthropic stop_reason "tool_use") would not run the tools.
            finish = ir.FinishReason.TOOL_CALLS
        return [*self._start({}), ir.MessageStop(finish)]

    def _fail(self, status: int, message: str, etype: str | None) -> list[ir.StreamEvent]:
        self._phase = _Phase.FAILED
        return [*self._start({}), ir.StreamFailed(status, message, etype)]

    def _read(self, chunk: dict[str, Any]) -> list[ir.StreamEvent]:
        events: list[ir.StreamEvent] = []
        usage = chunk.get("usage")
        usage = None if usage is None else decode_usage(usage)
        choices = chunk.get("choices")
        choice = choices[0] if type(choices) is list and choices else None
        if type(choice) is dict:
            delta = choice.get("delta")
            if type(delta) is dict:
                events += self._delta(delta)
            reason = choice.get("finish_reason")
            if reason is not None:
                self._finish = decode_finish(reason) or self._finish
            if usage is None and "usage" in choice:  # Moonshot: usage inside choices[0]
                usage = decode_usage(choice["usage"])
        if usage is not None:
            events.append(ir.UsageUpdate(usage))
        return events

    def _delta(self, delta: dict[str, Any]) -> list[ir.StreamEvent]:
        events: list[ir.StreamEvent] = []
        if "reasoning_content" in delta or "reasoning" in delta or "reasoning_details" in delta:
            events += [ir.ThinkingDelta(t) for t in reasoning_texts(delta)]
        for key in ("content", "refusal"):  # a refusal is what the model said: text for every client
            text = delta.get(key)
            if isinstance(text, str) and text:
                events.append(ir.TextDelta(text))
        calls = delta.get("tool_calls")
        for fragment in calls if isinstance(calls, list) else ():
            if isinstance(fragment, dict):
                events += self._tool_fragment(fragment)
        return events

    def _tool_fragment(self, fragment: dict[str, Any]) -> list[ir.StreamEvent]:
        fn = fragment.get("function")
        fn = fn if isinstance(fn, dict) else {}
        call_id, name, args = (
            str_or_empty(fragment.get("id")),
            str_or_empty(fn.get("name")),
            str_or_empty(fn.get("arguments")),
        )
        index = fragment.get("index")
        ordinal, events = self._call_for(index if is_int(index) else None, call_id, name)
        if args:  # empty fragments carry nothing (and Anthropic clients would see a pointless delta)
            events.append(ir.ToolCallDelta(ordinal, args))
        return events

    def _call_for(self, index: int | None, call_id: str, name: str) -> tuple[int, list[ir.StreamEvent]]:
        """The ordinal of the call a fragment belongs to, opening a new call when needed."""
        # Moonshot: a fragment without an index continues the current call...
        current = len(self._call_ids) - 1 if self._call_ids else None
        known = current if index is None else self._by_index.get(index)
        if known is not None and (not call_id or call_id == self._call_ids[known]):
            return known, []
        # ...unless it brings a new id; likewise a provider that numbers every call 0 with new ids.
        ordinal = len(self._call_ids)
        if index is not None:
            self._by_index[index] = ordinal
        self._call_ids.append(call_id or synth_call_id())
        return ordinal, [ir.ToolCallStart(ordinal, self._call_ids[ordinal], name)]


def _chunk_error(chunk: dict[str, Any]) -> tuple[int, str, str | None] | None:
    """An in-band error: ``{"error": …}`` (as the openai SDK decides: a truthy ``error``) or MiniMax's
    ``base_resp``."""
    err = chunk.get("error")
    if err:
        if not isinstance(err, dict):
            return 502, str(err), None
        etype, message = (
            str_or_empty(err.get("type")) or None,
            str_or_empty(err.get("message")) or "upstream stream error",
        )
        return _error_status(err), message, etype
    found = minimax_error(chunk)
    return None if found is None else (found[0], found[1], None)


def _error_status(err: dict[str, Any]) -> int:
    code = err.get("code")
    if is_int(code) and 400 <= code <= 599:  # some compatible providers put the HTTP status here
        return code
    for key in (err.get("type"), code):
        if isinstance(key, str) and key in _ERROR_STATUS:
            return _ERROR_STATUS[key]
    return 502


# -- encoder ------------------------------------------------------------------------------------


class ChatStreamEncoder:
    """IR stream events -> ``chat.completion.chunk`` SSE bytes for an OpenAI client."""

    def __init__(self, req: ir.ChatRequest, model: str) -> None:
        self._model = model
        self._include_usage = req.include_usage  # the client asked for the trailing usage chunk
        self._id = ""  # set by the role chunk, which must be the first chunk
        self._usage: ir.Usage | None = None  # last snapshot, written at MessageStop
        self._closed = False  # [DONE] or an error went out: nothing may follow

    def encode(self, ev: ir.StreamEvent) -> bytes:
        if self._closed:
            return b""
        if isinstance(ev, ir.MessageStart):
            self._usage = ev.usage or self._usage
            return self._open(ev.id)
        if type(ev) is ir.TextDelta and self._id:  # the bulk of a stream, without the match below
            return self._delta({"content": ev.text}) if ev.text else b""
        return self._open("") + self._body(ev)

    def error(self, err: RelayError) -> bytes:
        if self._closed:
            return b""
        self._closed = True  # the SDK raises APIError on this event; no [DONE] may follow
        return b"data: " + orjson.dumps(stream_error_body(err)) + b"\n\n"

    def ping(self) -> bytes:
        return b": ping\n\n"

    def finish(self) -> bytes:
        return b""

    def _body(self, ev: ir.StreamEvent) -> bytes:
        match ev:
            case ir.TextDelta(text=text) if text:
                return self._delta({"content": text})
            case ir.ThinkingDelta(text=text) if text:
                return self._delta({"reasoning_content": text})  # non-standard; the SDK keeps extras
            case ir.ToolCallStart():
                return self._delta({"tool_calls": [_tool_head(ev)]})
            case ir.ToolCallDelta(index=index, arguments=fragment) if fragment:
                return self._delta({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
            case ir.UsageUpdate(usage=usage):
                self._usage = usage
            case ir.MessageStop(finish=finish):
                return self._stop(finish)
            case ir.StreamFailed(status=status, message=message, type=etype):
                return self.error(UpstreamStatusError(status, message, upstream_type=etype))
        return b""  # ThinkingSignature and empty fragments have nothing to say to an OpenAI client

    def _open(self, upstream_id: str) -> bytes:
        """The role chunk, once. Example failure prevented: ``role`` repeated later reads as
        "assistantassistant" in the SDK's stream helper."""
        if self._id:
            return b""
        self._id = chat_id(upstream_id)
        return self._delta({"role": "assistant", "content": ""})

    def _stop(self, finish: ir.FinishReason) -> bytes:
        self._closed = True
        out = self._delta({}, finish.value)
        if self._include_usage:
            out += self._chunk([], encode_usage(self._usage or ir.Usage()))
        return out + _DONE_EVENT

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": 0,  # codecs have no clock; the SDK does not care
            "model": self._model,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = usage  # null on every chunk but the last, as OpenAI does
        return b"data: %b\n\n" % orjson.dumps(chunk)


def _tool_head(ev: ir.ToolCallStart) -> dict[str, Any]:
    """A call's first fragment: the only one with id, type and name (the helper concatenates them)."""
    call_id = fold_signature(ev.id, ev.signature)
    return {"index": ev.index, "id": call_id, "type": "function", "function": {"name": ev.name, "arguments": ""}}


# -- passthrough tap ----------------------------------------------------------------------------


class StreamTap:
    """Reads an OpenAI stream that passes through: usage, finish reason, terminator.

    ``feed`` returns False for an event the client must not see: the trailing usage-only chunk
    when the client did not ask for usage (the gateway forces ``include_usage`` upstream). It
    returns the chunk re-serialised when it fixes one of the quirks of protocols.md §8.8 that the
    OpenAI SDK's stream helper trips on: usage inside ``choices[0]`` (Moonshot) goes to the top
    level, a tool-call delta without ``index`` gets the current call's, and a ``role`` repeated
    after a choice's first delta is dropped. Chunks without a quirk pass as they came.
    """

    def __init__(self, *, client_wants_usage: bool) -> None:
        self.client_wants_usage = client_wants_usage
        self.usage: ir.Usage | None = None
        self.finish_reason: str | None = None
        self.done = False  # saw data: [DONE]
        self.error: dict[str, Any] | None = None  # an in-band error from upstream
        self._roles: set[Any] = set()  # choice indexes whose role has been sent
        self._calls: dict[Any, int] = {}  # choice index -> index of its current tool call

    def feed(self, ev: SSEEvent) -> bool | bytes:
        data = ev.data
        if data.startswith(DONE):
            self.done = True
            return True
        if self.done or not data:
            return True
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return True
        if type(chunk) is not dict:
            return True
        # Most chunks are a content delta with ``"usage": null`` and ``"finish_reason": null``:
        # each check below is one dict lookup before any of the slower readers run.
        if chunk.get("error"):
            err = chunk["error"]
            self.error = err if isinstance(err, dict) else {"message": str(err)}
            return True
        if "base_resp" in chunk and (found := minimax_error(chunk)) is not None:
            self.error = {"message": found[1], "code": found[0]}
            return True
        verdict = self._read_chunk(chunk)
        if verdict == "fixed":
            return encode_event(orjson.dumps(chunk), ev.event)
        return verdict == "keep"

    def _read_chunk(self, chunk: dict[str, Any]) -> Literal["keep", "drop", "fixed"]:
        """Read usage and the finish reason, and fix the chunk's quirks in place."""
        choices = chunk.get("choices")
        usage = chunk.get("usage")
        usage = None if usage is None else decode_usage(usage)
        fixed = False
        if type(choices) is list and choices:
            for choice in choices:
                if type(choice) is dict and type(delta := choice.get("delta")) is dict:
                    fixed = self._fix_delta(choice.get("index", 0), delta) or fixed
            if type(first := choices[0]) is dict:
                reason = first.get("finish_reason")
                if reason is not None and isinstance(reason, str):
                    self.finish_reason = reason
                if usage is None and "usage" in first:  # Moonshot: usage inside choices[0]
                    usage = decode_usage(first["usage"])
                    if self.client_wants_usage and usage is not None:  # where the SDK reads it
                        chunk["usage"] = first.pop("usage")
                        fixed = True
        if usage is not None:
            self.usage = usage  # cumulative wherever it appears: the last one wins
            if choices == [] and not self.client_wants_usage:
                return "drop"
        return "fixed" if fixed else "keep"

    def _fix_delta(self, choice: Any, delta: dict[str, Any]) -> bool:
        """Fix a delta in place (a repeated role, index-less tool calls); True when changed."""
        fixed = False
        if "role" in delta:
            if choice in self._roles:
                del delta["role"]  # the SDK's helper would append it to the role again
                fixed = True
            elif delta["role"] is not None:
                self._roles.add(choice)
        calls = delta.get("tool_calls")
        if type(calls) is list:
            for call in calls:
                if type(call) is not dict:
                    continue
                index = call.get("index")
                if type(index) is not int:  # seen from Moonshot: the current call, or a new one
                    current = self._calls.get(choice, -1)
                    index = current + 1 if call.get("id") or current < 0 else current
                    call["index"] = index
                    fixed = True
                self._calls[choice] = index
        return fixed
