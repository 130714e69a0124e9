"""The client x upstream matrix for coding agents: Claude Code, Gemini CLI and Codex, each headless
against a `relayproxy serve` process and the fake upstreams, once per upstream protocol. A text
run, then a run whose model calls a tool the agent really has; the agent runs it, sends the
result back and prints the answer after it. Text intact, tool name and arguments, deltas before
the end (from the agent's own event stream), every request's usage record completed and billed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.clients.agents import AGENTS, assert_agent_streamed, outcome
from tests.clients.catalog import node_too_old
from tests.clients.harness import UPSTREAMS, Run, assert_billed, matrix_gateway, run_all, usage_rows
from tests.e2e.conftest import Gateway
from tests.fakes.scripted import ANSWER, KNOWN_TOOLS, TEXT, TOOL_MARKER

pytestmark = pytest.mark.clients
__all__ = ["matrix_gateway"]
OLD_NODE = "Gemini CLI 0.61.0 declares engines node>=20; this Node is older"
SKIP = {"gemini-cli": OLD_NODE} if node_too_old(20) else {}
CELLS = [
    pytest.param(agent, up, id=f"{agent}/{up}", marks=[pytest.mark.skip(reason=SKIP[agent])] if agent in SKIP else [])
    for agent in AGENTS
    for up in UPSTREAMS
]


@pytest.fixture(scope="module")
def runs(matrix_gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    cells = [(f"{agent}:{case}", up, make(case)) for agent, (_, make) in AGENTS.items() if agent not in SKIP
             for up in UPSTREAMS for case in ("text", "tool")]  # fmt: skip
    return run_all(matrix_gateway, cells, tmp_path_factory.mktemp("agent-runs"))


@pytest.fixture(scope="module")
def usage(runs: dict[str, Run], matrix_gateway: Gateway) -> list[dict[str, Any]]:
    return usage_rows(matrix_gateway)


@pytest.mark.parametrize(("agent", "up"), CELLS)
def test_text(runs: dict[str, Run], agent: str, up: str) -> None:
    text, calls = outcome(agent, runs[f"{agent}:text/{up}"])
    assert (text, calls) == (TEXT, [])


@pytest.mark.parametrize(("agent", "up"), CELLS)
def test_tool_round_trip(runs: dict[str, Run], agent: str, up: str) -> None:
    text, calls = outcome(agent, runs[f"{agent}:tool/{up}"])
    if agent == "codex":  # it reports the command it ran and its output
        assert len(calls) == 1 and calls[0][1]["command"].endswith("'echo relay-tool-ok-7'"), calls
        assert TOOL_MARKER in calls[0][1]["output"]
    else:
        name = {"claude-code": "Bash", "gemini-cli": "read_file"}[agent]
        assert calls == [(name, KNOWN_TOOLS[name])]
    assert text == ANSWER, "the answer after the tool result quotes what the tool returned"


@pytest.mark.parametrize(("agent", "up"), CELLS)
def test_deltas_arrive_before_the_end(runs: dict[str, Run], agent: str, up: str) -> None:
    assert_agent_streamed(agent, runs[f"{agent}:text/{up}"])


@pytest.mark.parametrize(("agent", "up"), CELLS)
def test_usage_completed_and_billed(runs: dict[str, Run], usage: list[dict[str, Any]], agent: str, up: str) -> None:
    assert_billed(usage, runs[f"{agent}:text/{up}"], expected=1)
    assert_billed(usage, runs[f"{agent}:tool/{up}"], expected=2)  # the call, the answer
