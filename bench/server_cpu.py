"""Where each server's CPU goes per streamed token: llama.cpp's compute threads and everything else (issue 24).

gallama and llama-server, the serving bench's flags, are started in turn (rounds alternate) and sent
streamed chats (temperature 0, end-of-generation tokens banned, so every request decodes --max-tokens
tokens): one stream at a time, then --concurrency at once. Each thread's time on the CPU is read from
`/proc/PID/task/TID/schedstat` (nanoseconds; `stat`'s utime and stime are sampled at the clock tick and
misread work that recurs every ~10 ms). The `--threads` busiest threads are llama.cpp's compute threads
(gallama's engine thread and llama-server's main loop each lead an OpenMP team); the rest is the
serving side: gallama's event-loop thread, llama-server's HTTP threads. CPU time, unlike wall time,
hardly moves with this machine's speed, which drifts by ~15% within minutes.

    python bench/server_cpu.py [--rounds 2] [--max-tokens 128] [--requests 8] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

ENGINES = ("gallama", "llama-server")
CONTEXT_PER_SLOT = 4096


def split_per_token(before: dict, after: dict, tokens: int, compute_threads: int) -> tuple[float, float]:
    """(compute threads', serving side's) CPU per token between two readings of each thread's CPU time."""
    spent = sorted((after[thread] - before.get(thread, 0.0) for thread in after), reverse=True)
    return sum(spent[:compute_threads]) / tokens, sum(spent[compute_threads:]) / tokens


async def streamed_tokens(client: httpx.AsyncClient, base_url: str, payload: dict) -> int:
    result = await common.stream_chat(client, base_url, payload)
    if result.status != 200:
        raise RuntimeError(f"HTTP {result.status}: {result.error}")
    return result.tokens


async def measure(server: common.Server, args, banned: list[int], round_index: int) -> dict[str, tuple[float, float]]:
    pid = server.process.pid
    figures = {}

    def thread_cpu_ms() -> dict[tuple[int, int], float]:
        return {thread: 1000 * seconds for thread, seconds in common.thread_cpu_seconds(pid).items()}

    # No keep-alive: llama-server's HTTP threads drop idle connections, and both sides then pay the same.
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        prompt = common.PROMPTS[0]
        await streamed_tokens(client, server.base_url, common.chat_payload(prompt, 8, banned))  # warm-up
        for streams, requests in ((1, args.requests), (args.concurrency, 2 * args.concurrency)):
            before, tokens = thread_cpu_ms(), 0
            for start in range(0, requests, streams):
                payloads = [common.chat_payload(f"{round_index}-{start + i}. {common.PROMPTS[(start + i) % len(common.PROMPTS)]}",
                                                args.max_tokens, banned) for i in range(streams)]
                tokens += sum(await asyncio.gather(*(streamed_tokens(client, server.base_url, p) for p in payloads)))
            figures[f"{streams}"] = split_per_token(before, thread_cpu_ms(), tokens, args.threads)
    return figures


def start(engine: str, args, binary: str) -> common.Server:
    if engine == "gallama":
        server = common.gallama_server(args.model, args.threads, args.slots, "--cache-size", str(args.slots * CONTEXT_PER_SLOT))
    else:
        server = common.llama_server(binary, args.model, args.threads, args.slots, CONTEXT_PER_SLOT,
                                     *common.LLAMA_SERVER_FLASH_ATTENTION_OFF)
    return server.start()


def report(results: dict[str, list[dict[str, tuple[float, float]]]], args) -> str:
    keys = ["1", str(args.concurrency)]
    lines = [
        f"- Date: {common.today()}; machine: {common.machine_description()}",
        f"- Command: `python bench/server_cpu.py --rounds {args.rounds} --max-tokens {args.max_tokens} "
        f"--requests {args.requests} --concurrency {args.concurrency}`",
        f"- Per round and server: {args.requests} streamed chats one at a time, then {2 * args.concurrency} as "
        f"{args.concurrency} at once; {args.max_tokens} tokens each; servers with the serving bench's flags "
        f"(`--threads {args.threads}`, {args.slots} slots, flash attention off), started in turn, rounds alternating.",
        "- CPU ms per streamed token, each round's figure (compute: the "
        f"{args.threads} busiest threads, llama.cpp's; serving: every other thread):",
        "",
        "| server | " + " | ".join(f"{k} stream{'s' if k != '1' else ''}: {part}" for k in keys for part in ("compute", "serving")) + " |",
        "|---|" + "---|" * (2 * len(keys)),
    ]
    for engine in ENGINES:
        cells = []
        for key in keys:
            for part in range(2):
                cells.append(", ".join(f"{round_figures[key][part]:.3f}" for round_figures in results[engine]))
        lines.append(f"| {engine} | " + " | ".join(cells) + " |")
    lines.append("")
    for key in keys:
        mine = common.median([r[key][1] for r in results["gallama"]])
        theirs = common.median([r[key][1] for r in results["llama-server"]])
        lines.append(f"- Serving side at {key} stream(s), gallama / llama-server: {common.fmt(common.ratio(mine, theirs), 2)} "
                     f"({mine:.3f} vs {theirs:.3f} ms a token; medians)")
    lines.append("- The compute threads' CPU includes OpenMP's barrier spinning, which grows when another thread "
                 "takes one of their cores mid-step.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=common.default_model_path())
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=8, help="single-stream requests per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()
    common.exit_on_sigterm()
    binary = common.llama_server_binary()
    banned = common.end_of_generation_tokens(args.model)
    results = defaultdict(list)
    for round_index in range(args.rounds):
        order = ENGINES if round_index % 2 == 0 else ENGINES[::-1]
        for engine in order:
            server = start(engine, args, binary)
            try:
                results[engine].append(asyncio.run(measure(server, args, banned, round_index)))
            finally:
                server.stop()
            print(engine, f"round {round_index + 1}:", {k: tuple(round(x, 3) for x in v) for k, v in results[engine][-1].items()}, flush=True)
    body = report(results, args)
    print(body)
    common.write_section("Server CPU per token: serving side and compute threads (bench/server_cpu.py)", body)


if __name__ == "__main__":
    main()
