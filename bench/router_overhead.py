"""Multi-model serving costs: (1) the latency the front adds to a request, against the
same request sent straight to the worker, in one run; (2) aggregate tokens/s of two
instances of the default model with one thread each, against one instance with two
threads, at 8 concurrent streams.

    python bench/router_overhead.py [--model PATH.gguf] [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402 (bench/ is not a package)
    PROMPTS, Server, chat_payload, default_model_path, end_of_generation_tokens, exit_on_sigterm, fmt, free_port,
    machine_description, median, percentile, ratio, today, versions, write_section,
)

STREAMS = 8


def gallama_front(name: str, *ids: str) -> Server:
    port = free_port()
    # Worker processes: what is measured is the front's hop to a worker, which a one-model server does not make.
    command = [sys.executable, "-m", "gallama", "serve", "--port", str(port), "--log-level", "warning", "--worker-processes"]
    for spec in ids:
        command += ["-id", spec]
    return Server(name, command, port)


def worker_urls(server: Server) -> list[str]:
    models = httpx.get(server.base_url + "/health", timeout=10).json()["models"]
    return [f"http://127.0.0.1:{i['port']}" for m in models for i in m["instances"]]


def latency(front: str, worker: str, requests: int) -> dict[str, dict[str, list[float]]]:
    """Per request kind, milliseconds through the front and direct, interleaved request by request."""
    kinds = {
        "tokenize (no decode)": ("/tokenize", {"model": "bench", "content": "Hello there"}),
        "completion, 1 token": ("/v1/completions", {"model": "bench", "prompt": "Hello there", "max_tokens": 1, "temperature": 0}),
    }
    times = {kind: {"front": [], "direct": []} for kind in kinds}
    with httpx.Client(timeout=60) as client:
        for kind, (path, body) in kinds.items():
            for _ in range(10):  # warm connections and the prompt cache
                client.post(front + path, json=body).raise_for_status()
                client.post(worker + path, json=body).raise_for_status()
            for n in range(requests):
                order = (("front", front), ("direct", worker)) if n % 2 else (("direct", worker), ("front", front))
                for label, base in order:
                    began = time.perf_counter()
                    client.post(base + path, json=body).raise_for_status()
                    times[kind][label].append((time.perf_counter() - began) * 1000)
    return times


async def aggregate(base_url: str, banned: list[int], max_tokens: int) -> tuple[float, int]:
    """Tokens/s over 8 concurrent streams, from the first request sent to the last token."""
    from common import stream_chat

    async with httpx.AsyncClient(timeout=600) as client:
        began = time.perf_counter()
        results = await asyncio.gather(*(
            stream_chat(client, base_url, chat_payload(PROMPTS[n % len(PROMPTS)], max_tokens, banned))
            for n in range(STREAMS)
        ))
        elapsed = time.perf_counter() - began
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"stream failed: {errors[0]}")
    tokens = sum(r.tokens for r in results)
    return tokens / elapsed, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="GGUF file (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--requests", type=int, default=300, help="latency samples per path and request kind")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per configuration (interleaved)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per stream in the throughput runs")
    args = parser.parse_args()
    exit_on_sigterm()
    model = args.model or default_model_path()
    banned = end_of_generation_tokens(model)
    spec = f"model_id={model} model_name=bench max_sequences={STREAMS} cache_size={STREAMS * 1024}"

    load_before = os.getloadavg()[0]
    servers: list[Server] = []
    try:
        single = gallama_front("gallama-1x2threads", f"{spec} threads=2")
        servers.append(single.start())
        print("latency: front vs direct to its worker ...", flush=True)
        times = latency(single.base_url, worker_urls(single)[0], args.requests)

        double = gallama_front("gallama-2x1thread", f"{spec} threads=1", f"{spec} threads=1")
        servers.append(double.start())
        rates: dict[str, list[float]] = {"two instances, 1 thread each": [], "one instance, 2 threads": []}
        for round_ in range(args.rounds):
            for label, server in (("two instances, 1 thread each", double), ("one instance, 2 threads", single)):
                rate, tokens = asyncio.run(aggregate(server.base_url, banned, args.max_tokens))
                rates[label].append(rate)
                print(f"round {round_ + 1}: {label}: {rate:.1f} tokens/s ({tokens} tokens)", flush=True)
    finally:
        for server in servers:
            server.stop()

    lines = [
        f"Run {today()} on {machine_description()}; {versions('gallama', 'llama-cpp-python', 'uvicorn', 'httpx')}. "
        f"1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run "
        "(other work shares these cores: read the numbers with that in mind).",
        f"Model: `{Path(model).name}`. Command: `python bench/router_overhead.py --requests {args.requests} "
        f"--rounds {args.rounds} --max-tokens {args.max_tokens}`.",
        "",
        f"### Latency the front adds ({args.requests} requests per path, alternating front and direct, one client)",
        "",
        "| request | direct to worker: median / p95 | through the front: median / p95 | added at the median | front / direct |",
        "|---|---|---|---|---|",
    ]
    for kind, samples in times.items():
        direct, front = samples["direct"], samples["front"]
        added = median(front) - median(direct)
        lines.append(
            f"| {kind} | {fmt(median(direct), 2)} / {fmt(percentile(direct, 95), 2)} ms | "
            f"{fmt(median(front), 2)} / {fmt(percentile(front, 95), 2)} ms | {fmt(added, 2)} ms | "
            f"{fmt(ratio(median(front), median(direct)), 2)}x |"
        )
    two, one = median(rates["two instances, 1 thread each"]), median(rates["one instance, 2 threads"])
    lines += [
        "",
        f"### Aggregate decode rate at {STREAMS} concurrent streams ({args.max_tokens} tokens each, end token banned, "
        f"median of {args.rounds} interleaved rounds)",
        "",
        "| configuration | tokens/s | ratio |",
        "|---|---|---|",
        f"| one instance, 2 threads, {STREAMS} sequences | {fmt(one)} | 1.00 |",
        f"| two instances behind one name, 1 thread each | {fmt(two)} | {fmt(ratio(two, one), 2)} |",
    ]
    body = "\n".join(lines)
    print(body)
    write_section("Router overhead and instances (bench/router_overhead.py)", body)


if __name__ == "__main__":
    main()
