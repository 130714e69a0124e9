"""The client x upstream matrix for SDKs and libraries: each client program (TypeScript SDKs, the
Vercel AI SDK, openai-agents, litellm, langchain-openai) runs for real against a `relayproxy
serve` process and the fake upstreams, once per upstream protocol. A text case, then a tool round
trip (the call, its result sent back, the answer after it); text intact, tool name and parsed
arguments, deltas before the end (the fake upstream holds each finish event until the client
reports its first delta, tests/fakes/scripted.py), and each
request's usage record completed and billed (`relayproxy usage --json`, one key per run)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.clients.catalog import SDKS, cells, launches
from tests.clients.harness import UPSTREAMS, Run, assert_billed, matrix_gateway, run_all, usage_rows
from tests.e2e.conftest import Gateway
from tests.fakes.scripted import ANSWER, TEXT

pytestmark = pytest.mark.clients
__all__ = ["matrix_gateway"]
CALLS = [{"name": "get_weather", "args": {"city": "Paris"}}]


@pytest.fixture(scope="module")
def runs(matrix_gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    return run_all(matrix_gateway, launches(SDKS), tmp_path_factory.mktemp("sdk-runs"))


@pytest.fixture(scope="module")
def usage(runs: dict[str, Run], matrix_gateway: Gateway) -> list[dict[str, Any]]:
    return usage_rows(matrix_gateway)


@pytest.mark.parametrize("cell", cells(SDKS, "text"))
def test_text(runs: dict[str, Run], cell: str) -> None:
    assert runs[cell].case("text")["text"] == TEXT


@pytest.mark.parametrize("cell", cells(SDKS, "tool"))
def test_tool_round_trip(runs: dict[str, Run], cell: str) -> None:
    tool = runs[cell].case("tool")
    assert tool["calls"] == CALLS
    assert tool["text"] == ANSWER, "the answer after the tool result quotes what the tool returned"


@pytest.mark.parametrize("cell", cells(SDKS, "stream"))
def test_deltas_arrive_before_the_end(runs: dict[str, Run], cell: str) -> None:
    runs[cell].assert_released(holds=3)  # the text turn, the call, the answer


@pytest.mark.parametrize("cell", cells(SDKS, "usage"))
def test_usage_completed_and_billed(runs: dict[str, Run], usage: list[dict[str, Any]], cell: str) -> None:
    assert_billed(usage, runs[cell], expected=3)  # the text turn, the call, the answer


@pytest.mark.parametrize("up", list(UPSTREAMS))
def test_stored_item_references_get_a_400_saying_store_false(runs: dict[str, Run], up: str) -> None:
    """The AI SDK's default store: true replays a streamed text as an item_reference only (catalog
    STORED): the caller is told how to fix it, not left with a bare type error."""
    run = runs.get(f"aisdk-openai-stored/{up}")
    if run is None:
        pytest.skip("aisdk-openai-stored not run (RELAYPROXY_CLIENTS_ONLY)")
    assert run.case("text")["text"] == TEXT
    objects = [obj for _, obj in run.lines if isinstance(obj, dict)]
    error = objects[-1]["tool"]["error"]
    assert "item_reference" in error and "setting store: false" in error, error[-2000:]
