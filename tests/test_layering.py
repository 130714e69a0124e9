"""The architecture holds: every module sits under the layers contract, no import cycle (not even
under TYPE_CHECKING), the pure packages do no I/O, and the linter's contracts really fail when
broken."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "relayproxy"
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
PURE = next(c for c in CONTRACTS if c["type"] == "forbidden")["source_modules"]
FORBIDDEN = {"asyncio", "socket", "ssl", "h11", "aiosqlite", "sqlite3", "asyncpg", "logging", "stripe"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def within(module: str, names: list[str]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def imported(path: Path) -> set[str]:
    """Every absolute import of the module, TYPE_CHECKING blocks and function bodies included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_relative_imports_are_not_used() -> None:
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path}: relative import"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_is_named_by_the_layers_contract(module: str) -> None:
    layers = next(c for c in CONTRACTS if c["type"] == "layers")["layers"]
    names = [n.strip() for line in layers for n in line.split("|")]
    assert module == "relayproxy" or within(module, names), f"{module} is under no layer of pyproject.toml"


def test_no_import_cycle() -> None:
    graph = {m: {d for d in imported(p) if d in MODULES and d != m} for m, p in MODULES.items()}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(m) :], m]))
        if m in done:
            return
        for dep in graph[m]:
            visit(dep, [*path, m])
        done.add(m)

    for m in graph:
        visit(m, [])


@pytest.mark.parametrize("module", [m for m in MODULES if within(m, PURE)])
def test_pure_module_does_no_io(module: str) -> None:
    assert not {name.split(".")[0] for name in imported(MODULES[module])} & FORBIDDEN


def test_no_bare_create_task() -> None:
    """Tasks are spawned in a TaskGroup (app, server), never with asyncio.create_task."""
    for path in MODULES.values():
        assert "asyncio.create_task" not in path.read_text(), path


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("ir.py", "import socket\n", "the pure packages do no I/O"),
        ("store/ledger.py", "import relayproxy.gateway\n", "layers"),
        ("codecs/openai_chat/_vocab.py", "import relayproxy.codecs.gemini_generate\n", "codecs are independent"),
    ],
)
def test_contracts_fail_when_broken(tmp_path: Path, module: str, line: str, broken: str) -> None:
    shutil.copytree(PACKAGE, tmp_path / "relayproxy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint(tmp_path).returncode == 0
    target = tmp_path / "relayproxy" / module
    target.write_text(line + target.read_text())
    result = lint(tmp_path)
    assert result.returncode != 0
    verdicts = [ln for ln in result.stdout.splitlines() if ln.endswith((" KEPT", " BROKEN"))]
    assert [ln for ln in verdicts if ln.endswith(" BROKEN")] == [next(v for v in verdicts if v.startswith(broken))]
