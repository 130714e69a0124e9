"""py-spy helpers for bench/run.py: install it into the venv, record a process, summarise the samples.

``python bench/profiling.py RAW [--top N]`` re-summarises a raw py-spy recording (collapsed stacks,
``--format raw --threads``) such as ``bench/results/profile.raw``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_FRAME = re.compile(r"^(.*) \((.*?)(?::(\d+))?\)$")
# Frames under which everything runs: left out of the total-time table, where they would only say 100%.
_TRAMPOLINES = re.compile(
    r"\((<frozen runpy>|asyncio/runners\.py|threading\.py|relayproxy/__main__\.py|relayproxy/cli\.py)\)$"
    r"|^BaseEventLoop\.(run_forever|run_until_complete|_run_once) |^Handle\._run "
)


def ensure_py_spy(python: str) -> str:
    """The py-spy executable, installed from PyPI into the venv of ``python`` when missing."""
    exe = Path(python).parent / "py-spy"
    if exe.exists():
        return str(exe)
    if shutil.which("py-spy"):
        return str(shutil.which("py-spy"))
    sys.stderr.write("bench: installing py-spy into the venv (pip install py-spy)\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(exe)


def version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return out.stdout.strip().rpartition(" ")[2] or "?"


def record_command(exe: str, pid: int, seconds: int, raw: Path, rate: int = 250, *, gil: bool = False) -> list[str]:
    """Sample every thread of ``pid`` without pausing it (--nonblocking), as collapsed stacks.

    ``gil``: only samples of the thread holding the GIL, i.e. Python code running on the CPU
    (a thread waiting in fsync or epoll_wait is otherwise sampled as if it were working).
    """
    return [
        exe, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(seconds),
        "--format", "raw", "--threads", "--nonblocking", "--output", str(raw), *(["--gil"] if gil else []),
    ]  # fmt: skip


def _short_path(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.11/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(ROOT))
    return path


def _parse(frame: str) -> tuple[str, str]:
    """'func (path/file.py:123)' -> ('func (file.py)', 'file.py:123')."""
    m = _FRAME.match(frame)
    if not m:
        return frame, frame
    func, path, line = m.groups()
    short = _short_path(path)
    return f"{func} ({short})", f"{short}:{line}" if line else short


def summarise(raw: Path, header: str, top: int = 40) -> str:
    """Own time (leaf frame) and total time per function, by thread and by file, as text."""
    own: Counter[str] = Counter()
    own_line: Counter[tuple[str, str]] = Counter()
    total: Counter[str] = Counter()
    files: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    for text in raw.read_text().splitlines():
        stack, _, count_text = text.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        thread = "?"
        if parts and parts[0].startswith("thread ("):
            thread = parts.pop(0).partition(": ")[2] or parts[0]
        frames = [_parse(f) for f in parts if "(" in f]
        if not frames:
            continue
        samples += count
        threads[thread] += count
        leaf, leaf_line = frames[-1]
        own[leaf] += count
        own_line[leaf, leaf_line] += count
        files[leaf.rpartition("(")[2].rstrip(")")] += count
        for func in {f for f, _ in frames}:
            total[func] += count
    if not samples:
        return header + "\nno samples\n"

    def pct(n: int) -> str:
        return f"{n * 100 / samples:>6.1f}%"

    hottest = {}
    for (func, line), n in own_line.most_common():
        hottest.setdefault(func, (line, n))
    out = [header, f"samples: {samples} (threads running or runnable; idle waits are not sampled)", ""]
    out += ["== samples by thread ==", *(f"{pct(n)} {n:>7}  {t}" for t, n in threads.most_common())]
    out += ["", f"== top {top} functions by own time (hottest line in brackets) =="]
    for func, n in own.most_common(top):
        line, ln = hottest[func]
        out.append(f"{pct(n)} {n:>7}  {func}  [{line}: {ln * 100 // n}%]")
    out += ["", f"== top {top} functions by total time (own + callees; event-loop and thread entry frames left out) =="]
    inclusive = [(func, n) for func, n in total.most_common() if not _TRAMPOLINES.search(func)]
    out += [f"{pct(n)} {n:>7}  {func}" for func, n in inclusive[:top]]
    out += ["", "== own time by file ==", *(f"{pct(n)} {n:>7}  {f}" for f, n in files.most_common(30))]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description="summarise a raw py-spy recording")
    p.add_argument("raw", type=Path)
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args()
    sys.stdout.write(summarise(args.raw, f"profile of {args.raw}", args.top))


if __name__ == "__main__":
    main()
