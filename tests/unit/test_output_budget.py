"""OutputBudget: the byte bound of a passthrough stream leaves room for a Responses stream's echo
of the request (``response.created``, ``.in_progress`` and ``.completed`` carry its tools and
instructions), so a small output limit with a big request is not cut as over-hold."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from relayproxy import ir
from relayproxy.gateway.streaming import OutputBudget, OverHold


@dataclass
class _Relay:
    relayed_bytes: int
    usage: ir.Usage | None = None


def test_a_request_echoed_three_times_fits_and_a_runaway_does_not() -> None:
    request = 100_000  # Codex: ~17 KB of instructions plus its tools, with room to spare
    echoed = _Relay(3 * request + 400 * 16)
    OutputBudget(16, passthrough=True, echo_bytes=request).check(echoed)  # type: ignore[arg-type]
    with pytest.raises(OverHold):
        OutputBudget(16, passthrough=True).check(echoed)  # type: ignore[arg-type]
    with pytest.raises(OverHold):
        OutputBudget(16, passthrough=True, echo_bytes=request).check(_Relay(5 * request + 400 * 16 + 65536))  # type: ignore[arg-type]
