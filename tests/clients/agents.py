"""How each coding agent is run headless against the gateway: its own base-URL setting, telemetry
and update checks off, a throwaway HOME, and the tool it really has (Claude Code's Bash, Gemini
CLI's read_file, Codex's exec_command) for the round trip. The prompts carry no run token, so the
fake upstream pauses HOLD_S before each finish event; streaming shows in the agent's own output."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.clients.harness import JS, PROMPT, TOOL_PROMPT, Launch, Run, assert_streamed, need_node
from tests.e2e.conftest import Gateway
from tests.fakes.scripted import TOOL_MARKER

BIN = JS / "node_modules" / ".bin"
QUIET = {"DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
         "DISABLE_ERROR_REPORTING": "1"}  # fmt: skip
GEMINI_SETTINGS = {
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"disableAutoUpdate": True, "disableUpdateNag": True},
    "security": {"auth": {"selectedType": "gemini-api-key"}},
}


def _prompt(case: str) -> str:
    return PROMPT if case == "text" else f"{TOOL_PROMPT} Use your tool."


def claude(case: str) -> Launch:
    def launch(gw: Gateway, key: str, model: str, work: Path) -> tuple[list[str], dict[str, str], Path]:
        need_node()
        argv = [str(BIN / "claude"), "-p", _prompt(case), "--model", model, "--output-format", "stream-json",
                "--verbose", "--include-partial-messages"]  # fmt: skip
        env = {
            "ANTHROPIC_BASE_URL": gw.base_url,
            "ANTHROPIC_API_KEY": key,
            "ANTHROPIC_SMALL_FAST_MODEL": model,
            **QUIET,
        }
        return argv, env, work

    return launch


def gemini(case: str) -> Launch:
    def launch(gw: Gateway, key: str, model: str, work: Path) -> tuple[list[str], dict[str, str], Path]:
        need_node()
        (work / ".gemini").mkdir(exist_ok=True)
        (work / ".gemini" / "settings.json").write_text(json.dumps(GEMINI_SETTINGS))
        (work / "relay-marker.txt").write_text(TOOL_MARKER + "\n")
        argv = [str(BIN / "gemini"), "-m", model, "-p", _prompt(case), "--output-format", "stream-json"]
        env = {"GOOGLE_GEMINI_BASE_URL": gw.base_url, "GEMINI_API_KEY": key, "GEMINI_CLI_TRUST_WORKSPACE": "true"}
        return argv, env, work

    return launch


def codex(case: str) -> Launch:
    def launch(gw: Gateway, key: str, model: str, work: Path) -> tuple[list[str], dict[str, str], Path]:
        need_node()
        home = work / "codex"
        home.mkdir(exist_ok=True)
        # A custom provider (Codex ignores OPENAI_BASE_URL), Codex's default tools (web_search
        # among them: translated upstreams leave it out, x-relayproxy-dropped-tools says so).
        (home / "config.toml").write_text(
            f'model = "{model}"\nmodel_provider = "relay"\ncheck_for_update_on_startup = false\n'
            '[analytics]\nenabled = false\n[model_providers.relay]\nname = "relay"\n'
            f'base_url = "{gw.base_url}/v1"\nenv_key = "RELAY_KEY"\nwire_api = "responses"\n'
        )
        argv = [str(BIN / "codex"), "exec", "--json", "--skip-git-repo-check", "-s", "read-only", _prompt(case)]
        return argv, {"CODEX_HOME": str(home), "RUST_LOG": CODEX_SSE_LOG}, work

    return launch


#: Codex's own trace of every SSE event it reads, on stderr with its clock: its --json output has
#: completed items only, which show no streaming when a message ends in the response's last chunk.
CODEX_SSE_LOG = "codex_api::sse::responses=trace"
CODEX_SSE = re.compile(r"^(\S+Z)\s+TRACE codex_api::sse::responses: SSE event: (\{.*\})$", re.M)


#: id -> (README label, launch per case). The coding agents (test_agents.py).
AGENTS: dict[str, tuple[str, Any]] = {
    "claude-code": ("Claude Code 2.1.197 `claude -p`", claude),
    "gemini-cli": ("Gemini CLI 0.61.0 `gemini -p`", gemini),
    "codex": ("Codex 0.171.0 `codex exec`", codex),
}


def objects(run: Run) -> list[tuple[float, dict[str, Any]]]:
    return [(t, o) for t, o in run.lines if isinstance(o, dict)]


def outcome(agent: str, run: Run) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """(final answer, tool calls as (name, input)) from an agent's JSON lines."""
    lines = [o for _, o in objects(run)]
    assert lines, f"{agent}: no JSON output (exit {run.returncode}): {run.stderr[-2000:]}"
    if agent == "claude-code":
        result = lines[-1]
        assert result.get("type") == "result" and not result.get("is_error"), result
        calls = [(b["name"], b["input"]) for o in lines if o.get("type") == "assistant"
                 for b in o["message"]["content"] if b.get("type") == "tool_use"]  # fmt: skip
        return str(result["result"]), calls
    if agent == "gemini-cli":
        assert lines[-1].get("type") == "result" and lines[-1].get("status") == "success", lines[-1]
        calls = [(o["tool_name"], o["parameters"]) for o in lines if o.get("type") == "tool_use"]
        after = max((i for i, o in enumerate(lines) if o.get("type") == "tool_result"), default=-1)
        text = "".join(
            o["content"] for o in lines[after + 1 :] if o.get("type") == "message" and o["role"] == "assistant"
        )
        return text, calls
    assert lines[-1].get("type") == "turn.completed", lines[-1]
    items = [o["item"] for o in lines if o.get("type") == "item.completed"]
    calls = [("exec_command", {"command": i["command"], "output": i["aggregated_output"]}) for i in items
             if i["type"] == "command_execution"]  # fmt: skip
    messages = [i["text"] for i in items if i["type"] == "agent_message"]
    return (messages[-1] if messages else ""), calls


def assert_agent_streamed(agent: str, run: Run) -> None:
    """Each answer's first delta well before its end, as the agent reported them."""
    lines = objects(run)
    if agent == "claude-code":  # arrival times of its stream-json partial-message events
        first: float | None = None
        turns = 0
        for t, o in lines:
            event = o.get("event", {}) if o.get("type") == "stream_event" else {}
            if event.get("type") == "content_block_delta" and first is None:
                first = t
            if event.get("type") == "message_stop":
                assert_streamed(first, t, f"claude-code turn {turns}")
                first, turns = None, turns + 1
        assert turns, "no message_stop event"
    elif agent == "codex":  # the SSE events Codex logged reading (CODEX_SSE_LOG): per response
        first, responses = None, 0
        for stamp, data in CODEX_SSE.findall(run.stderr):
            kind, at = json.loads(data).get("type"), datetime.fromisoformat(stamp).timestamp() * 1000
            if kind == "response.output_text.delta" and first is None:
                first = at
            if kind == "response.completed":
                assert_streamed(first, at, f"codex response {responses}")
                first, responses = None, responses + 1
        assert responses, f"no response.completed in Codex's SSE trace: {run.stderr[-2000:]}"
    elif agent == "gemini-cli":  # its own timestamps: the first delta, the result after the end
        stamp = {o["type"] if not o.get("delta") else "delta": datetime.fromisoformat(o["timestamp"]).timestamp() * 1000
                 for _, o in reversed(lines) if "timestamp" in o}  # fmt: skip
        assert "delta" in stamp and "result" in stamp, [o for _, o in lines]
        assert_streamed(stamp["delta"], stamp["result"], "gemini-cli")
