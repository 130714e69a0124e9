"""openai_chat codec: request checks, usage normalisation, error shapes, the stream tap."""

from __future__ import annotations

import orjson
import pytest

from relayproxy.codecs import openai_chat
from relayproxy.errors import (
    InvalidRequest,
    ProviderUnavailable,
    UnknownModel,
    UpstreamStatusError,
    UpstreamTimeout,
)
from relayproxy.ir import Usage
from relayproxy.sse import SSEEvent

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_check_request_accepts_minimal_and_reads_flags() -> None:
    info = openai_chat.check_request({**OK, "stream": True, "stream_options": {"include_usage": True}})
    assert (info.model, info.stream, info.include_usage, info.max_output_tokens) == ("m", True, True, None)
    assert openai_chat.check_request({**OK, "max_tokens": 5, "max_completion_tokens": 7}).max_output_tokens == 7


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ([], None),
        ({"messages": OK["messages"]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["x"]}, "messages[0]"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({**OK, "stream": "yes"}, "stream"),
        ({**OK, "stream_options": {"include_usage": "y"}}, "stream_options.include_usage"),
        ({**OK, "max_tokens": -1}, "max_tokens"),
        ({**OK, "max_completion_tokens": True}, "max_completion_tokens"),
        ({**OK, "temperature": 3}, "temperature"),
        ({**OK, "n": 2}, "n"),
    ],
)
def test_check_request_rejects_with_field_path(body: object, path: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        openai_chat.check_request(body)
    assert info.value.path == path


def test_prepare_passthrough_forces_usage_and_upstream_model() -> None:
    body = {**OK, "stream": True, "stream_options": {"include_obfuscation": False}}
    sent = orjson.loads(openai_chat.prepare_passthrough(body, "real-model", True))
    assert sent["model"] == "real-model"
    assert sent["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert "stream_options" not in orjson.loads(openai_chat.prepare_passthrough(dict(OK), "x", False))


@pytest.mark.parametrize(
    ("usage", "want"),
    [
        (
            {"prompt_tokens": 88, "completion_tokens": 61, "prompt_tokens_details": {"cached_tokens": 64},
             "completion_tokens_details": {"reasoning_tokens": 20}},
            Usage(88, 64, 61, 20),
        ),
        ({"prompt_tokens": 10, "completion_tokens": 3, "prompt_cache_hit_tokens": 4}, Usage(10, 4, 3, 0)),  # DeepSeek
        ({"prompt_tokens": 10, "completion_tokens": 3, "cached_tokens": 6}, Usage(10, 6, 3, 0)),  # Moonshot
        ({"prompt_tokens": 2, "completion_tokens": 1, "cached_tokens": 9}, Usage(2, 2, 1, 0)),  # cached <= prompt
        ({"prompt_tokens": "2", "completion_tokens": None}, Usage(0, 0, 0, 0)),
        (None, None),
    ],
)  # fmt: skip
def test_decode_usage(usage: object, want: Usage | None) -> None:
    assert openai_chat.decode_usage(usage) == want


def test_response_usage_inside_choices() -> None:
    body = {"choices": [{"index": 0, "usage": {"prompt_tokens": 5, "completion_tokens": 2}}]}
    assert openai_chat.response_usage(body) == Usage(5, 0, 2, 0)


@pytest.mark.parametrize(
    ("err", "status", "etype", "code"),
    [
        (InvalidRequest("bad", "messages"), 400, "invalid_request_error", "invalid_request"),
        (UnknownModel("nope"), 404, "invalid_request_error", "model_not_found"),
        (ProviderUnavailable("set X"), 503, "service_unavailable_error", "provider_unavailable"),
        (UpstreamTimeout("slow"), 504, "timeout_error", "upstream_timeout"),
        (
            UpstreamStatusError(429, "slow down", upstream_type="requests"),
            429,
            "requests",
            "rate_limit_exceeded",
        ),
        (
            UpstreamStatusError(500, "boom", upstream_type="server_error"),
            502,
            "server_error",
            "upstream_status",
        ),
    ],
)
def test_encode_error_shape(err: InvalidRequest, status: int, etype: str, code: str) -> None:
    got_status, body = openai_chat.encode_error(err)
    assert got_status == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == (etype, code)


def test_decode_error_keeps_upstream_message_and_type() -> None:
    body = orjson.dumps({"error": {"message": "Rate limit", "type": "requests", "code": "rate_limit_exceeded"}})
    err = openai_chat.decode_error(429, body, "7")
    assert (err.status, err.message, err.upstream_type, err.retry_after) == (
        429,
        "Rate limit",
        "requests",
        "7",
    )
    assert openai_chat.decode_error(500, b"<html>", None).status == 502
    assert openai_chat.decode_error(529, b"", None).status == 503


def test_embedded_minimax_error() -> None:
    err = openai_chat.embedded_error({"base_resp": {"status_code": 1004, "status_msg": "auth failed"}})
    assert err is not None and err.status == 401 and err.message == "auth failed"
    assert openai_chat.embedded_error({"choices": [], "base_resp": {"status_code": 0}}) is None


def ev(data: bytes) -> SSEEvent:
    return SSEEvent(None, data, b"data: " + data + b"\n\n")


def test_stream_tap_reads_finish_usage_done_and_drops_unrequested_usage_chunk() -> None:
    tap = openai_chat.StreamTap(client_wants_usage=False)
    assert tap.feed(ev(b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}'))
    assert not tap.feed(ev(b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}'))
    assert tap.feed(ev(b"[DONE]"))
    assert (tap.finish_reason, tap.usage, tap.done) == ("stop", Usage(3, 0, 1, 0), True)


def test_stream_tap_keeps_usage_chunk_when_asked_and_reads_moonshot_usage() -> None:
    tap = openai_chat.StreamTap(client_wants_usage=True)
    assert tap.feed(ev(b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}'))
    moon = (
        b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":4,"completion_tokens":2}}]}'
    )
    assert tap.feed(ev(moon))
    assert tap.usage == Usage(4, 0, 2, 0)


def test_stream_tap_error_and_junk() -> None:
    tap = openai_chat.StreamTap(client_wants_usage=False)
    assert tap.feed(ev(b"{not json")) and tap.feed(ev(b"[1,2]")) and tap.feed(ev(b""))
    assert tap.feed(ev(b'{"error":{"message":"x","type":"server_error"}}'))
    assert tap.error == {"message": "x", "type": "server_error"} and not tap.done


def test_encode_stream_error_is_an_openai_error_event() -> None:
    out = openai_chat.encode_stream_error(UpstreamTimeout("stalled"))
    assert out.startswith(b"data: {") and out.endswith(b"\n\n")
    assert orjson.loads(out[6:])["error"]["message"] == "stalled"
