"""The pure layer never does I/O: no asyncio, sockets, TLS, h11, SQLite or logging in it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "relayproxy"
PURE = ["sse.py", "relay.py", "ir.py", "errors.py", "http_types.py", "records.py", "keys.py", "router.py", "codecs"]
FORBIDDEN = {"asyncio", "socket", "ssl", "h11", "aiosqlite", "sqlite3", "logging", "stripe"}


def pure_modules() -> list[Path]:
    out: list[Path] = []
    for name in PURE:
        path = PACKAGE / name
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_module_does_no_io(path: Path) -> None:
    assert not imported(path) & FORBIDDEN


def test_no_bare_create_task() -> None:
    """Tasks are spawned in a TaskGroup (app.py, server.py), never with asyncio.create_task."""
    for path in PACKAGE.rglob("*.py"):
        assert "asyncio.create_task" not in path.read_text(), path
