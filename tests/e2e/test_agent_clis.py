"""The agent CLIs from npm, pointed at gallama: each completes a turn in which the model calls one of the
CLI's tools and the CLI sends its result back. The CLIs are installed into a cache folder; without npm
or the registry the tests skip and say why."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEFAULT_MODEL, start_server, stop_server

CLI_CACHE = Path(os.environ.get("GALLAMA_CLI_CACHE", Path.home() / ".cache" / "gallama-clis"))


def installed_cli(package: str, binary: str) -> Path:
    path = CLI_CACHE / "node_modules" / ".bin" / binary
    if path.exists():
        return path
    if shutil.which("npm") is None:
        pytest.skip(f"npm is not installed: cannot install {package}")
    CLI_CACHE.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["npm", "install", "--prefix", str(CLI_CACHE), "--no-audit", "--no-fund", package],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not path.exists():
        pytest.skip(f"npm could not install {package}: {result.stderr.strip()[-500:]}")
    return path


@pytest.fixture(scope="module")
def long_context_server(tmp_path_factory):
    # The CLIs' prompts run to thousands of tokens: the bundled model's whole 8192-token context per sequence.
    # Codex sets no output limit: a call takes ~40 tokens, a rambling text answer the whole context.
    running = start_server(str(tmp_path_factory.mktemp("agents")), "-id",
                           f"model_id={DEFAULT_MODEL} max_sequences=2 max_seq_len=8192 default_max_tokens=300",
                           timeout_s=180)
    yield running
    stop_server(running)


def test_claude_code_runs_a_bash_tool_and_reads_its_result(long_context_server, tmp_path):
    claude = installed_cli("@anthropic-ai/claude-code", "claude")
    env = {
        **os.environ, "HOME": str(tmp_path), "ANTHROPIC_BASE_URL": long_context_server.base_url,
        "ANTHROPIC_API_KEY": "unused", "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # Its default, 32000, is more than the context holds; a call takes ~30 tokens, a rambling text answer all.
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "300",
    }
    command = [str(claude), "-p", "Run the command: echo hello", "--system-prompt", "You run shell commands with the Bash tool.",
               "--tools", "Bash", "--allowedTools", "Bash", "--model", DEFAULT_MODEL, "--max-turns", "2",
               "--output-format", "stream-json", "--verbose"]
    # Claude Code sets no temperature: at the default (1) the 135M model answers in text instead of calling
    # in about one run of three (measured), or calls with a rambling command that the 300-token budget cuts
    # (then Claude Code keeps the unparsed input); those runs are tried again.
    for _ in range(8):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert not any("API Error" in str(line.get("result")) for line in lines), result.stdout[-2000:]
        calls = [block for line in lines if line.get("type") == "assistant"
                 for block in line["message"]["content"] if block["type"] == "tool_use"]
        if calls and calls[0]["input"].get("command"):
            break
    results = [block for line in lines if line.get("type") == "user"
               for block in line["message"]["content"] if isinstance(block, dict) and block.get("type") == "tool_result"]
    assert calls and calls[0]["name"] == "Bash" and calls[0]["input"].get("command"), result.stdout[-2000:]
    assert results and results[0]["tool_use_id"] == calls[0]["id"], result.stdout[-2000:]


class RecordingProxy:
    """Passes each request to gallama unchanged and keeps what went by: the CLI's request bodies and the
    events gallama streamed back (the CLI's --json output does not show what it sends the model)."""

    def __init__(self, upstream: str):
        self.requests: list[dict] = []
        self.events: list[dict] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                proxy.requests.append(json.loads(body))
                headers = {"content-type": self.headers["content-type"]}
                with httpx.stream("POST", upstream + self.path, content=body, headers=headers, timeout=600) as reply:
                    self.send_response(reply.status_code)
                    self.send_header("content-type", reply.headers["content-type"])
                    self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                    for line in reply.iter_lines():
                        if line.startswith("data: "):
                            proxy.events.append(json.loads(line[6:]))
                        self.wfile.write(line.encode() + b"\n")
                        self.wfile.flush()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, name: str) -> dict[str, dict]:
        """The calls to `name` that gallama streamed, by call_id."""
        items = [event["item"] for event in self.events if event.get("type") == "response.output_item.done"]
        return {item["call_id"]: item for item in items if item["type"] == "function_call" and item["name"] == name}

    def ends(self) -> list[str]:
        """How each finished response stream ended (response.completed or response.failed)."""
        return [event["type"] for event in self.events if event.get("type") in ("response.completed", "response.failed")]

    def carrying(self, call_id: str) -> int:
        """The index of the first request that sent back the output of this call."""
        return next(index for index, request in enumerate(self.requests) for item in request.get("input", [])
                    if isinstance(item, dict) and item.get("type") == "function_call_output"
                    and item.get("call_id") == call_id)

    def outputs_sent_back(self) -> dict[str, str]:
        """The function_call_output items the CLI sent in its later requests, by call_id."""
        return {item["call_id"]: item["output"] for request in self.requests for item in request.get("input", [])
                if isinstance(item, dict) and item.get("type") == "function_call_output"}


# Codex's prompt trimmed to what a 135M model can follow in an 8192-token context: our own instructions
# instead of its 4.5k-token base prompt, no permissions, environment, apps, collaboration or skills blocks,
# and no sub-agent, goal, image or web-search tools; its shell tool (exec_command) stays.
CODEX_TRIM = [
    "-c", "include_permissions_instructions=false", "-c", "include_environment_context=false",
    "-c", "include_apps_instructions=false", "-c", "include_collaboration_mode_instructions=false",
    "-c", "skills.include_instructions=false", "-c", 'web_search="disabled"',
    "--disable", "multi_agent", "--disable", "goals", "--disable", "view_image",
]


def test_codex_runs_a_shell_command_and_sends_its_result_back(long_context_server, tmp_path):
    codex = installed_cli("@openai/codex", "codex")
    instructions = tmp_path / "instructions.md"
    instructions.write_text("You run shell commands with the exec_command tool.")
    workdir = tmp_path / "work"
    workdir.mkdir()
    proxy = RecordingProxy(long_context_server.base_url)
    command = [str(codex), "exec", "--json", "--ephemeral", "--skip-git-repo-check",
               "--dangerously-bypass-approvals-and-sandbox", "-m", DEFAULT_MODEL,
               "-c", "model_provider=gallama", "-c", "model_providers.gallama.name=gallama",
               "-c", f"model_providers.gallama.base_url={proxy.url}/v1", "-c", "model_providers.gallama.wire_api=responses",
               "-c", f"model_instructions_file={instructions}", *CODEX_TRIM, "Run the command: echo hello"]
    env = {**os.environ, "HOME": str(tmp_path)}
    # Codex sets no temperature: at the default (1) the 135M model answers in text in about one run of
    # three (then the turn is over), or calls write_stdin or passes parameters Codex refuses; Codex sends
    # those errors back and the model tries again. A run goes on until a command that ran has its output
    # sent back and the model has answered the request that carried it; the model may go on calling tools
    # after it (each answer starting Codex's next request at once), so the run is stopped there.
    def answered_a_result(log: Path) -> bool:
        found = ran_and_sent_back(log, proxy)
        # Codex sends one request at a time: the n-th stream that ended answered the n-th request.
        return found is not None and len(proxy.ends()) > found[2]

    try:
        for attempt in range(8):
            proxy.requests.clear()
            proxy.events.clear()
            log = tmp_path / f"codex-{attempt}.jsonl"
            with open(log, "w") as out:
                # Its own process group: the npm wrapper does not pass a signal on to the native binary.
                process = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)
                deadline = time.monotonic() + 300
                while process.poll() is None and time.monotonic() < deadline and not answered_a_result(log):
                    time.sleep(0.5)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
            if answered_a_result(log):
                break
    finally:
        proxy.close()
    events = codex_events(log)
    assert not [e for e in events if e.get("type") in ("error", "turn.failed")], log.read_text()[-3000:]
    assert answered_a_result(log), (log.read_text()[-3000:], proxy.outputs_sent_back())
    ran, sent_back, _ = ran_and_sent_back(log, proxy)
    # What went back to the model is what the command did, and the model's next answer came through.
    assert f"Process exited with code {ran['exit_code']}" in sent_back, sent_back
    if "truncated output" not in sent_back:  # the model may pass exec_command a small max_output_tokens
        assert ran["aggregated_output"].strip() in sent_back, sent_back
    assert set(proxy.ends()) == {"response.completed"}


def codex_events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def ran_and_sent_back(log: Path, proxy: RecordingProxy) -> tuple[dict, str, int] | None:
    """A command that Codex ran for an exec_command call of the model, the output it sent back for it, and
    the index of the request that carried that output."""
    ran = [event["item"] for event in codex_events(log)
           if event.get("type") == "item.completed" and event["item"].get("type") == "command_execution"]
    outputs = proxy.outputs_sent_back()
    for call_id, call in proxy.calls("exec_command").items():
        command = json.loads(call["arguments"])["cmd"]
        for item in ran:  # Codex runs it as `/bin/bash -lc '<cmd>'`
            if call_id in outputs and command in item["command"]:
                return item, outputs[call_id], proxy.carrying(call_id)
    return None
