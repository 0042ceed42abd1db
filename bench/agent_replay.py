"""An agent's conversation replayed through the agents' APIs: gallama against llama.cpp's server.

Agents resend a long, growing prompt every turn: a tool-heavy system prompt of a few thousand
tokens, then the conversation so far, with tool calls and their results. This script replays
one such conversation (fixed turns, the same on both servers, interleaved turn by turn) through
an endpoint (`/v1/messages`, `/v1/responses`) and reports, per turn, the time to the first
streamed token and the prompt tokens each server says it reused from its cache.

Goal: every turn after the first reuses the whole shared prefix; the median TTFT is at most
llama-server's.

    python bench/agent_replay.py [--endpoints messages,responses] [--turns 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

TOOLS_TEMPLATE = Path(__file__).resolve().parent / "templates" / "chatml_tools.jinja"
CONTEXT = 8192  # the bundled model's whole context: the agent's prompt grows to ~5k tokens
TOOL_AREAS = ("file", "git", "shell", "search", "http", "database", "calendar", "email", "image", "notes",
              "tests", "deploy")


def tools() -> list[dict[str, Any]]:
    """Twelve tools with the long descriptions agents give them (together a few thousand tokens)."""
    made = []
    for area in TOOL_AREAS:
        description = (
            f"Runs a {area} operation for the user. Use it whenever the task involves {area} work; prefer it "
            f"over guessing. The operation is described by 'action'; 'target' names what it acts on. Results come "
            f"back as text. Keep calls small and check each result before the next call. " * 6
        )
        made.append({"name": f"{area}_tool", "description": description, "input_schema": {
            "type": "object", "properties": {
                "action": {"type": "string", "description": f"What to do: one {area} action."},
                "target": {"type": "string", "description": "What the action works on."},
            }, "required": ["action", "target"]}})
    return made


SYSTEM = ("You are a coding agent working in a repository. Think about which tool fits, call it, read its "
          "result, and go on until the task is done. Be brief in text; let the tools do the work. ") * 4


def transcript(turns: int) -> list[list[dict[str, Any]]]:
    """The Anthropic messages of each turn's request: every turn adds a tool call and its result."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Find why the tests fail and fix it."}]
    requests = [list(messages)]
    for turn in range(1, turns):
        area = TOOL_AREAS[turn % len(TOOL_AREAS)]
        call_id = f"toolu_{turn:04d}"
        messages += [
            {"role": "assistant", "content": [{"type": "tool_use", "id": call_id, "name": f"{area}_tool",
                                               "input": {"action": "inspect", "target": f"step {turn}"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id,
                                          "content": f"Result of step {turn}: " + "line of output. " * 12}]},
        ]
        requests.append(list(messages))
    return requests


def responses_input(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same conversation as Responses input items."""
    items: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message["content"], str):
            items.append({"type": "message", "role": message["role"], "content": message["content"]})
            continue
        for block in message["content"]:
            if block["type"] == "tool_use":
                items.append({"type": "function_call", "call_id": block["id"], "name": block["name"],
                              "arguments": json.dumps(block["input"])})
            else:
                items.append({"type": "function_call_output", "call_id": block["tool_use_id"],
                              "output": block["content"]})
    return items


def messages_body(model: str, messages, max_tokens: int) -> dict[str, Any]:
    return {"model": model, "system": SYSTEM, "tools": tools(), "messages": messages, "max_tokens": max_tokens,
            "stream": True, "temperature": 0}


def responses_body(model: str, messages, max_tokens: int) -> dict[str, Any]:
    function_tools = [{"type": "function", "name": t["name"], "description": t["description"],
                       "parameters": t["input_schema"]} for t in tools()]
    return {"model": model, "instructions": SYSTEM, "tools": function_tools, "input": responses_input(messages),
            "max_output_tokens": max_tokens, "stream": True, "temperature": 0, "store": False}


def _cached(usage: dict[str, Any] | None) -> int | None:
    if not usage:
        return None
    if "cache_read_input_tokens" in usage:
        return usage["cache_read_input_tokens"]
    details = usage.get("input_tokens_details") or {}
    return details.get("cached_tokens")


def _prompt(usage: dict[str, Any] | None) -> int | None:
    if not usage:
        return None
    return usage.get("input_tokens", 0) + (usage.get("cache_read_input_tokens") or 0)


# The first event that shows generated output; a turn with none (the model ended at once) counts to its end.
FIRST_TOKEN_EVENTS = {"content_block_start", "content_block_delta", "response.output_item.added",
                      "response.output_text.delta", "response.function_call_arguments.delta"}
END_EVENTS = {"message_delta", "response.completed", "response.incomplete"}


def one_turn(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Streams one request: seconds to the first token, and the usage its last events report."""
    started = time.perf_counter()
    first = None
    usage: dict[str, Any] = {}
    with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            return {"error": f"{response.status_code} {response.read()[:300]!r}"}
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            kind = event.get("type")
            if first is None and (kind in FIRST_TOKEN_EVENTS or kind in END_EVENTS):
                first = time.perf_counter() - started
            if kind == "message_start":
                usage.update(event["message"].get("usage") or {})
            elif kind == "message_delta":
                usage.update(event.get("usage") or {})
            elif kind in ("response.completed", "response.incomplete"):
                usage.update(event["response"].get("usage") or {})
    return {"ttft": first, "cached": _cached(usage), "prompt": _prompt(usage) or usage.get("input_tokens")}


ENDPOINTS: dict[str, tuple[str, Callable]] = {"messages": ("/v1/messages", messages_body),
                                               "responses": ("/v1/responses", responses_body)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file; default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--endpoints", default="messages,responses")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--chat-template", default=str(TOOLS_TEMPLATE),
                        help="a Jinja chat template both servers use ('model': each its model's own; SmolLM2's "
                             "renders no tools, so llama-server's prompt would leave them out)")
    args = parser.parse_args()
    common.exit_on_sigterm()
    model_path = args.model or common.default_model_path()
    binary = common.llama_server_binary()
    own_templates = args.chat_template == "model"
    gallama_template = [] if own_templates else ["--chat-template", args.chat_template]
    llama_server_template = [] if own_templates else ["--jinja", "--chat-template-file", args.chat_template]
    servers = {
        "gallama": common.gallama_server(model_path, args.threads, 1, "--cache-size", str(CONTEXT), *gallama_template),
        "llama-server": common.llama_server(binary, model_path, args.threads, 1, CONTEXT,
                                            *common.LLAMA_SERVER_FLASH_ATTENTION_OFF, *llama_server_template),
    }
    turns = transcript(args.turns)
    rows, summary = [], []
    try:
        for server in servers.values():
            server.start()
        for endpoint in args.endpoints.split(","):
            path, body = ENDPOINTS[endpoint]
            results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
            with httpx.Client(timeout=600) as client:
                for number, messages in enumerate(turns, 1):
                    for name, server in servers.items():  # interleaved: both see the same machine load
                        outcome = one_turn(client, server.base_url + path, body("bench", messages, args.max_tokens))
                        results[name].append(outcome)
                    g, l = results["gallama"][-1], results["llama-server"][-1]
                    rows.append(f"| {endpoint} | {number} | {g.get('prompt', '')} | "
                                f"{common.fmt(g.get('ttft') and g['ttft'] * 1000)} ms | {g.get('cached', g.get('error', ''))} | "
                                f"{common.fmt(l.get('ttft') and l['ttft'] * 1000)} ms | {l.get('cached', l.get('error', ''))} |")
                    print(rows[-1], flush=True)
            medians = {}
            for name, outcomes in results.items():
                later = [o["ttft"] for o in outcomes[1:] if o.get("ttft")]
                medians[name] = statistics.median(later) if later else None
            reuse = {name: sum(1 for prev, now in zip(outcomes, outcomes[1:])
                               if now.get("cached") is not None and prev.get("prompt")
                               and now["cached"] >= prev["prompt"] - 2) for name, outcomes in results.items()}
            summary.append(f"| {endpoint} | {common.fmt(medians['gallama'] and medians['gallama'] * 1000)} ms | "
                           f"{common.fmt(medians['llama-server'] and medians['llama-server'] * 1000)} ms | "
                           f"{common.fmt(common.ratio(medians['gallama'], medians['llama-server']), 2)} | "
                           f"{reuse['gallama']}/{len(turns) - 1} | {reuse['llama-server']}/{len(turns) - 1} |")
    finally:
        for server in servers.values():
            server.stop()
    table = "\n".join(["| endpoint | turn | prompt tokens | gallama TTFT | gallama reused | llama-server TTFT | llama-server reused |",
                       "|---|---|---|---|---|---|---|", *rows])
    totals = "\n".join(["| endpoint | gallama median TTFT (turns 2+) | llama-server | ratio | "
                        "turns reusing the whole previous prompt: gallama | llama-server |",
                        "|---|---|---|---|---|---|", *summary])
    print(totals)
    command = ("python bench/agent_replay.py " + " ".join(sys.argv[1:])).strip()
    common.write_section("Agent conversation replay (bench/agent_replay.py)", f"""
Run {common.today()} on {common.machine_description()}; {common.versions("llama-cpp-python")}.
Command: `{command}`. Model: `{Path(model_path).name}`, {args.threads} threads, one slot of {CONTEXT}
tokens on each server, flash attention off on both; {len(turns)} turns of a scripted agent conversation
(12 tools with long descriptions, each turn one more tool call and its result), streamed, greedy,
{args.max_tokens} tokens each, the two servers interleaved turn by turn. TTFT: to the first streamed
output event (a text or tool-call block), or to the end of a turn that generated nothing but its end;
reused: the prompt tokens the server reports reading from its cache; prompt tokens: gallama's (each
server renders the tools into its own prompt).

{totals}

{table}
""")


if __name__ == "__main__":
    main()
