"""Soak: N concurrent clients for M minutes against `gallama serve` on the default model.

Each client loops over a mix of requests (streamed and whole chat completions, text completions,
JSON-mode answers, invalid bodies, and streams it drops after a few chunks). Every request must end
in a result or a clear error (a 4xx error object or an error event); anything else (a cut stream, a
transport error, a client timeout) is a lost request. Memory is the resident set of the front plus its
workers, after a warm-up (the KV cache's pages are touched as sequences grow) and at the end.

    python bench/soak.py [--clients 6] [--minutes 3] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402 (bench/ is not a package)
    PROMPTS, REPO_ROOT, default_model_path, exit_on_sigterm, gallama_server, machine_description, process_tree,
    rss_mib, today, versions, write_section,
)

CLIENT_TIMEOUT_S = 120.0
# (kind, weight): what one client iteration sends.
MIX = [("stream", 35), ("chat", 20), ("drop", 15), ("completion", 10), ("json", 10), ("invalid", 10)]


def body_for(kind: str, rng: random.Random) -> tuple[str, dict]:
    prompt = rng.choice(PROMPTS)
    chat = {"model": "bench", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": rng.randint(8, 96), "temperature": rng.choice([0, 0.7])}
    if kind in ("stream", "drop"):
        return "/v1/chat/completions", {**chat, "stream": True}
    if kind == "json":
        return "/v1/chat/completions", {**chat, "response_format": {"type": "json_object"}}
    if kind == "completion":
        return "/v1/completions", {"model": "bench", "prompt": prompt, "max_tokens": chat["max_tokens"]}
    if kind == "invalid":
        return "/v1/chat/completions", {**chat, "temperature": "hot"}
    return "/v1/chat/completions", chat


def error_code(text: str) -> str:
    try:
        error = json.loads(text)["error"]
        return error["code"] or error["type"]
    except (ValueError, KeyError, TypeError):
        return "not an error object"


async def one_request(client: httpx.AsyncClient, kind: str, rng: random.Random) -> str:
    """The outcome: 'ok', 'dropped' (on purpose), '4xx ...', '5xx ...', 'error event ...' or 'lost ...'."""
    path, body = body_for(kind, rng)
    try:
        if not body.get("stream"):
            response = await client.post(path, json=body)
            if response.status_code >= 400:
                return f"{response.status_code // 100}xx {error_code(response.text)}"
            return "ok" if response.json().get("choices") else "lost (no choices)"
        keep = rng.randint(1, 6) if kind == "drop" else None
        async with client.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                return f"{response.status_code // 100}xx {error_code((await response.aread()).decode())}"
            seen = 0
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    return "ok"
                if data.startswith('{"error"'):
                    return f"error event {error_code(data)}"
                seen += 1
                if keep is not None and seen >= keep:
                    return "dropped"  # leaving the block closes the connection mid-stream
            return "lost (stream ended without [DONE])"
    except httpx.HTTPError as error:
        return f"lost ({type(error).__name__})"


async def client_loop(base_url: str, seed: int, until: float, outcomes: Counter) -> None:
    rng = random.Random(seed)
    kinds, weights = zip(*MIX)
    async with httpx.AsyncClient(base_url=base_url, timeout=CLIENT_TIMEOUT_S) as client:
        while time.monotonic() < until:
            kind = rng.choices(kinds, weights)[0]
            outcome = await one_request(client, kind, rng)
            outcomes[f"{kind}: {outcome}"] += 1


async def soak(base_url: str, clients: int, seconds: float, seed: int) -> Counter:
    outcomes: Counter = Counter()
    until = time.monotonic() + seconds
    await asyncio.gather(*(client_loop(base_url, seed + n, until, outcomes) for n in range(clients)))
    return outcomes


def idle_state(base_url: str) -> dict:
    """Running and queued sequences once the load is gone (a leaked sequence shows here)."""
    deadline = time.monotonic() + 30
    while True:
        model = httpx.get(base_url + "/health", timeout=10).json()["models"][0]
        if model["running"] == model["queued"] == 0 or time.monotonic() > deadline:
            return model


def client_sockets_held(pids: list[int], port: int) -> int:
    """Sockets of the server's processes on its public port, the listener aside: clients' connections, or a
    worker's copy of one that a handed-over stream left behind. With no client connected, none."""
    time.sleep(1.0)  # the last clients' connections close on the server's side
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] != "0A":  # 0A: listening
                    inodes.add(f"socket:[{fields[9]}]")
    held = 0
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                held += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
            except OSError:
                pass
    return held


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    return head.stdout.strip() or "unknown"


def report(args, outcomes: Counter, memory: dict[str, float], idle: dict, minutes: float, load: list[float]) -> str:
    total = sum(outcomes.values())
    server_errors = sum(n for o, n in outcomes.items() if ": 5xx" in o)
    lost = sum(n for o, n in outcomes.items() if ": lost" in o)
    growth = (memory["end"] - memory["warm"]) / memory["warm"] * 100
    rows = "\n".join(f"| {outcome} | {n} |" for outcome, n in sorted(outcomes.items()))
    verdict = "met" if server_errors == 0 and lost == 0 and growth < 5 and memory["held_end"] == 0 else "NOT met"
    return f"""\
`python bench/soak.py --clients {args.clients} --minutes {args.minutes:g} --warmup {args.warmup:g} --write` on {today()},
commit {commit()}; {machine_description()}; {versions('llama_cpp_python')}.
gallama on the bundled SmolLM2-135M-Instruct, `--threads {args.threads} --max-sequences {args.max_sequences}`
({args.clients} clients for {args.max_sequences} sequences: requests also queue). The machine is shared
with other work (load average {load[0]:.1f} before the run, {load[1]:.1f} at its end), so throughput here
means nothing; the point is what fails and what grows.

- requests: {total} in {minutes:.1f} min; 5xx: {server_errors}; lost (no result, no clear error): {lost}
- after the load: {idle['running']} running and {idle['queued']} queued sequences
- resident memory, front plus worker: {memory['start']:.0f} MiB just started, {memory['warm']:.0f} MiB after
  the {args.warmup:g} s warm-up, {memory['end']:.0f} MiB at the end: growth {growth:+.1f}% over the soak
- client sockets the server still holds once every client has closed: {memory['held_warm']:.0f} after the
  warm-up, {memory['held_end']:.0f} at the end
- goal (no 5xx, no lost request, memory growth under 5%, no client socket left behind): {verdict}

| request kind: outcome | count |
|---|---|
{rows}

`dropped` streams were closed by the client after 1 to 6 chunks, on purpose; `4xx` answers to `invalid`
bodies are the expected error objects.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the soak, after the warm-up")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the memory baseline")
    parser.add_argument("--threads", type=int, default=1, help="one thread spins less on a shared machine")
    parser.add_argument("--max-sequences", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write the results to docs/benchmarks.md")
    args = parser.parse_args()
    exit_on_sigterm()
    load = [os.getloadavg()[0]]
    server = gallama_server(default_model_path(), args.threads, args.max_sequences).start()
    try:
        memory = {"start": rss_mib(process_tree(server.process.pid))}
        asyncio.run(soak(server.base_url, args.clients, args.warmup, args.seed + 1000))
        memory["warm"] = rss_mib(process_tree(server.process.pid))
        idle_state(server.base_url)
        memory["held_warm"] = client_sockets_held(process_tree(server.process.pid), server.port)
        began = time.monotonic()
        outcomes = asyncio.run(soak(server.base_url, args.clients, args.minutes * 60, args.seed))
        minutes = (time.monotonic() - began) / 60
        idle = idle_state(server.base_url)
        memory["end"] = rss_mib(process_tree(server.process.pid))
        memory["held_end"] = client_sockets_held(process_tree(server.process.pid), server.port)
        load.append(os.getloadavg()[0])
    finally:
        server.stop()
    body = report(args, outcomes, memory, idle, minutes, load)
    print(body)
    if args.write:
        write_section("Soak: concurrent clients, dropped streams, memory (bench/soak.py)", body)


if __name__ == "__main__":
    main()
