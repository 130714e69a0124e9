"""Shared by the Python client scripts (run by .venv-clients' interpreter, not the suite's): the
gateway from the environment, the weather tool, a delta clock, one JSON result line on stdout."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

BASE = os.environ.get("RELAY_BASE_URL", "")
KEY = os.environ.get("RELAY_KEY", "")
MODEL = os.environ.get("RELAY_MODEL", "")
PROMPT = os.environ.get("RELAY_PROMPT", "")
TOOL_PROMPT = os.environ.get("RELAY_TOOL_PROMPT", "")
TOOL_OUTPUT = json.dumps({"temp_c": 18, "note": os.environ.get("RELAY_TOOL_MARKER", "")})
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


RELEASE = os.environ.get("RELAY_RELEASE_URL")


def _release() -> None:
    if RELEASE:
        with urllib.request.urlopen(RELEASE, timeout=10) as reply:
            reply.read()


class Clock:
    """One streamed response: its first delta tells the fake upstream to release its held finish
    event (RELAY_RELEASE_URL), and is timed, as is the end (ms, one clock)."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.deltas = 0

    def delta(self) -> None:
        self.deltas += 1
        if self.first is None:
            self.first = time.perf_counter() * 1000
            threading.Thread(target=_release, daemon=True).start()

    def end(self) -> dict[str, Any]:
        return {"first_delta_ms": self.first, "end_ms": time.perf_counter() * 1000, "deltas": self.deltas}


async def main(
    text_case: Callable[[], Awaitable[dict[str, Any]]], tool_case: Callable[[], Awaitable[dict[str, Any]]]
) -> None:
    out: dict[str, Any] = {}
    for name, case in (("text", text_case), ("tool", tool_case)):
        try:
            out[name] = await case()
        except Exception:
            out[name] = {"error": traceback.format_exc()}
    sys.stdout.write(json.dumps(out) + "\n")
    if any("error" in case for case in out.values()):
        raise SystemExit(1)
