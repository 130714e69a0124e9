"""What the fake upstream's protocols share: the captured request, the scripted reply, fixture SSE
events, JSON error bodies, and the pacing scenarios (``tailN``, ``hang``, ``slow``, ``late``, ``pause``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


@dataclass
class Captured:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)
    delay_s: float = 0.0
    head_delay_s: float = 0.0  # silence before the status line
    pause_after: int = 0  # a long pause after this many events (0: none)
    pause_s: float = 0.0  # its length (0: PAUSE_S)
    hang_after: int = -1  # after this many events, wait for the gateway to hang up (-1: never)
    hold_token: str | None = None  # instead of the pause: wait for that client's release (scripted.Holds)
    end: str = "ok"  # ok | truncate (clean chunked end, no terminator) | reset | stall | cut (no final chunk)


def sse_events(path: Path) -> list[bytes]:
    """Split a fixture into its events, keeping each event's exact bytes."""
    data = path.read_bytes()
    sep = b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n"
    parts = data.split(sep)
    return [p + sep for p in parts if p.strip()]


def error(status: int, message: str, etype: str, code: str | None = None) -> Reply:
    body = json.dumps({"error": {"message": message, "type": etype, "param": None, "code": code}}).encode()
    return Reply(status, [("content-type", "application/json")], [body])


def json_error(status: int, body: dict[str, Any], retry_after: str | None = None) -> Reply:
    reply = Reply(status, [("content-type", "application/json")], [json.dumps(body).encode()])
    if retry_after:
        reply.headers.append(("retry-after", retry_after))
    return reply


def json_reply(body: dict[str, Any]) -> Reply:
    return Reply(200, [("content-type", "application/json")], [json.dumps(body).encode()])


def common_reply(scenario: str) -> Reply | None:
    if scenario == "http500":
        return Reply(500, [("content-type", "text/html")], [b"<html><body>Internal Server Error</body></html>"])
    if scenario == "badjson":
        return Reply(200, [("content-type", "application/json")], [b"{not json"])
    return None


def stream_reply(protocol: str, scenario: str, *, terminal: bytes, usage_marker: bytes) -> Reply:
    thinking = {"anthropic": "thinking_tools.sse", "gemini": "thinking.sse"}[protocol]
    name = {"tools": "tools.sse", "midstream-error": "error.sse", "thinking": thinking}.get(scenario, "text.sse")
    events = sse_events(FIXTURES / protocol / name)
    reply = Reply(200, [("content-type", "text/event-stream; charset=utf-8")], events)
    head = [e for e in events if terminal not in e and usage_marker not in e]
    if scenario == "nousage" and protocol == "gemini":
        reply.events = [_strip_gemini_usage(e) for e in events]
    elif scenario in ("nousage", "nousagehang"):
        reply.events = [_strip_anthropic_usage(e) for e in events]
        pacing(reply, "tailhang" if scenario == "nousagehang" else scenario, b"event: message_delta")
    elif scenario in ("truncated", "reset", "stall", "cut"):
        reply.events = head[:3]
        reply.end = {"truncated": "truncate"}.get(scenario, scenario)
    else:
        answer = b"event: message_delta" if protocol == "anthropic" else b'"finishReason"'
        pacing(reply, scenario, answer)
    return reply


PAUSE_S = 1.6  # longer than the e2e gateway's keepalive_ping_s


def pacing(reply: Reply, scenario: str, answer: bytes) -> None:
    """``answer``: a marker of the event that completes the answer (for ``tailN`` and ``hang``)."""
    at = next((i for i, e in enumerate(reply.events) if answer in e), len(reply.events) - 1)
    if scenario.startswith("tail") and scenario[4:].isdigit():
        reply.pause_after, reply.pause_s = at + 1, int(scenario[4:]) / 1000
    elif scenario in ("hang", "tailhang"):
        reply.hang_after = at if scenario == "hang" else at + 1
    elif scenario == "slow":
        reply.delay_s = 0.05
    elif scenario == "late":
        reply.head_delay_s = PAUSE_S
    elif scenario == "pause":
        reply.pause_after = 2


def _strip_gemini_usage(event: bytes) -> bytes:
    data = json.loads(event.split(b"data: ", 1)[1])
    data.pop("usageMetadata", None)
    return b"data: " + json.dumps(data).encode() + b"\r\n\r\n"


def _strip_anthropic_usage(event: bytes) -> bytes:
    name, _, data = event.partition(b"\ndata: ")
    obj = json.loads(data)
    if obj.get("type") == "message_start":
        obj["message"].pop("usage", None)
    if obj.get("type") == "message_delta":
        obj.pop("usage", None)
    return name + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"
