"""`[server] event_loop`: the gateway's loop is the one configured, uvloop when "auto" finds it."""

from __future__ import annotations

import asyncio
import sys

import pytest

from relayproxy.app import run


async def loop_module() -> str:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_asyncio_is_the_standard_library_loop() -> None:
    assert run(loop_module(), "asyncio") == "asyncio"


def test_uvloop_and_auto_run_on_uvloop() -> None:
    pytest.importorskip("uvloop")
    assert run(loop_module(), "uvloop") == "uvloop"
    assert run(loop_module(), "auto") == "uvloop"


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert run(loop_module(), "auto") == "asyncio"
    coro = loop_module()
    with pytest.raises(ImportError):
        run(coro, "uvloop")
    coro.close()
