"""`make clients-table`: the client x upstream table in README.md, from the matrix run's junit XML.

    python -m tests.clients.table README.md LABEL=results.xml [LABEL=results.xml ...]

Each cell is the outcome of that client's tests against that upstream (text, tool round trip,
deltas before the end, usage completed and billed): pass (how many of its checks), fail (naming
the failed checks), xfail (a known limit) or skip (not observable, or not installable here), each
with its reason below the table. The `tests/e2e` rows count that module's parametrized tests.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from tests.clients.agents import AGENTS
from tests.clients.catalog import SDKS
from tests.clients.harness import UPSTREAMS

START, END = "<!-- clients-table:start -->", "<!-- clients-table:end -->"
#: Rows from the end-to-end suite's openai (Python) Responses tests, one per SDK generation.
E2E_ROWS = {
    "py-openai": "`openai` (Python, dev extras) Responses, `tests/e2e`",
    "py-openai-previous": "`openai` 1.109.1 (Python) Responses, `tests/e2e`",
}
CHECKS = {"test_text": "text", "test_tool_round_trip": "tool", "test_deltas_arrive_before_the_end": "stream",
          "test_usage_completed_and_billed": "usage"}  # fmt: skip
PARAM = re.compile(r"^(\w+)\[(.+)\]$")


def outcomes(files: list[tuple[str, Path]]) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
    """{(row, up): [(check, outcome, message)]} from junit files (label: which e2e row)."""
    cells: dict[tuple[str, str], list[tuple[str, str, str]]] = defaultdict(list)
    for label, path in files:
        for case in ET.parse(path).getroot().iter("testcase"):
            found = PARAM.match(case.get("name", ""))
            if not found:
                continue
            test, param = found.groups()
            if case.get("classname", "").endswith("test_sdk_openai_responses"):
                row, up = label, param.split("-")[-1]
            elif "/" in param and case.get("classname", "").startswith("tests.clients."):
                row, _, up = param.rpartition("/")
            else:
                continue
            if up not in UPSTREAMS:
                continue
            cells[(row, up)].append((CHECKS.get(test, test), *_outcome(case)))
    return cells


def _outcome(case: ET.Element) -> tuple[str, str]:
    for tag in ("failure", "error"):
        if (el := case.find(tag)) is not None:
            return "fail", el.get("message", "")
    if (el := case.find("skipped")) is not None:
        kind = "xfail" if el.get("type") == "pytest.xfail" else "skip"
        return kind, re.sub(r"^(?:Skipped: |reason: )", "", el.get("message", ""))
    return "pass", ""


def render(cells: dict[tuple[str, str], list[tuple[str, str, str]]]) -> str:
    labels = {**{k: v[0] for k, v in SDKS.items()}, **{k: v[0] for k, v in AGENTS.items()}, **E2E_ROWS}
    notes: list[str] = []
    lines = ["| client | " + " | ".join(f"{p} upstream" for p in UPSTREAMS.values()) + " |",
             "|---|" + "---|" * len(UPSTREAMS)]  # fmt: skip
    for row, label in labels.items():
        if not any((row, up) in cells for up in UPSTREAMS):
            continue
        lines.append(f"| {label} | " + " | ".join(_cell(cells.get((row, up), []), notes) for up in UPSTREAMS) + " |")
    lines.append("")
    lines += [f"{i}. {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)


def _cell(results: list[tuple[str, str, str]], notes: list[str]) -> str:
    if not results:
        return "not run"
    failed = sorted({c for c, o, _ in results if o == "fail"})
    if failed:
        return "**fail** (" + ", ".join(failed) + ")"
    marks = []
    for kind in ("xfail", "skip"):
        reasons: dict[str, list[str]] = defaultdict(list)
        for check, _, why in (r for r in results if r[1] == kind):
            reasons[why].append(check)
        for why, checks in reasons.items():
            if why not in notes:
                notes.append(why)
            marks.append(f"{kind} {', '.join(sorted(checks))} [{notes.index(why) + 1}]")
    passed = sum(o == "pass" for _, o, _ in results)
    return "; ".join(([f"pass ({passed}/{len(results)})"] if passed else []) + marks)


def rewrite(readme: Path, table: str) -> None:
    text = readme.read_text(encoding="utf-8")
    head, found, rest = text.partition(START)
    _, found_end, tail = rest.partition(END)
    assert found and found_end, f"{readme} has no {START} ... {END} section"
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str]) -> int:
    readme, *specs = argv
    files = [(label, Path(path)) for label, _, path in (s.partition("=") for s in specs) if Path(path).exists()]
    rewrite(Path(readme), render(outcomes(files)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
