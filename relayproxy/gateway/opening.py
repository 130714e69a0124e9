"""What opening an upstream call ends with, as the inference and streaming paths hand it over."""

from __future__ import annotations

from relayproxy.policy.plan import Plan
from relayproxy.upstream import UpstreamResponse

__all__ = ["Answer", "Opened", "unwrap"]

#: An upstream that answered 200: the plan that reached it (the requested model or a fallback).
Opened = tuple[Plan, UpstreamResponse]
#: What a spawned upstream opening ends with: the answer, or the error it raised (captured,
#: because an exception escaping a TaskGroup child would cancel the whole group).
Answer = Opened | Exception


def unwrap(result: Answer) -> Opened:
    if isinstance(result, Exception):
        raise result
    return result
