"""What the front costs for an instance placed on a Ray node, against a local one, in one run.

Two fronts serve the same model with one thread each: one with a local worker (streams handed over to
it, or relayed for a request with an Origin header), one with `--ray` and a worker on another node of
a Ray cluster on this machine (Ray's cluster_utils; streams relayed by the front, every request
carrying the cluster secret), and a second one on the front's own node (streams handed over).
Requests alternate, one client at a time: latency of requests that decode nothing or one token, and
for streams the time to first token, the decode rate and the front process's own CPU time per
streamed token (the workers' excluded; the Ray front's process also runs Ray's driver threads).

    python bench/ray_overhead.py [--requests 200] [--streams 20] [--max-tokens 64]
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
    Server, chat_payload, default_model_path, end_of_generation_tokens, exit_on_sigterm, fmt, free_port,
    machine_description, median, percentile, stream_chat, today, versions, write_section,
)


def front(name: str, spec: str, *extra: str) -> Server:
    port = free_port()
    return Server(name, [sys.executable, "-m", "gallama", "serve", "--port", str(port), "--log-level", "warning",
                         "-id", spec, *extra], port)


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process (all its threads), not its children."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(fronts: dict[str, Server], requests: int) -> dict[str, dict[str, list[float]]]:
    """Per request kind and front, milliseconds, the fronts alternating request by request."""
    kinds = {
        "tokenize (no decode)": ("/tokenize", {"model": "bench", "content": "Hello there"}),
        "completion, 1 token": ("/v1/completions", {"model": "bench", "prompt": "Hello there", "max_tokens": 1, "temperature": 0}),
    }
    times = {kind: {label: [] for label in fronts} for kind in kinds}
    order = list(fronts.items())
    with httpx.Client(timeout=60) as client:
        for kind, (path, body) in kinds.items():
            for _ in range(10):  # warm connections and the prompt cache
                for _, server in order:
                    client.post(server.base_url + path, json=body).raise_for_status()
            for n in range(requests):
                for label, server in order if n % 2 else order[::-1]:
                    began = time.perf_counter()
                    client.post(server.base_url + path, json=body).raise_for_status()
                    times[kind][label].append((time.perf_counter() - began) * 1000)
    return times


async def streams(variants: dict[str, tuple[Server, dict, str]], count: int, max_tokens: int,
                  banned: list[int]) -> dict[str, dict]:
    """Sequential streams, alternating variants (a front, headers, a model): TTFT (ms), decode tokens/s, the
    front's CPU ms per token."""
    stats = {label: {"ttft": [], "rate": [], "cpu_s": 0.0, "tokens": 0} for label in variants}
    payload = chat_payload("Tell me a long story about a lighthouse keeper.", max_tokens, banned)
    clients = {label: httpx.AsyncClient(timeout=600, headers=headers) for label, (_, headers, _) in variants.items()}
    order = list(variants)
    try:
        for n in range(count):
            for label in order if n % 2 else order[::-1]:
                server, _, model = variants[label]
                cpu_before = process_cpu_seconds(server.process.pid)
                result = await stream_chat(clients[label], server.base_url, {**payload, "model": model})
                cpu = process_cpu_seconds(server.process.pid) - cpu_before
                if result.error:
                    raise RuntimeError(f"{label}: {result.error}")
                stats[label]["ttft"].append(result.first_token_s * 1000)
                stats[label]["rate"].append(result.decode_tokens_per_s)
                stats[label]["cpu_s"] += cpu  # summed: one stream takes a few clock ticks of the front
                stats[label]["tokens"] += result.tokens
    finally:
        for client in clients.values():
            await client.aclose()
    return stats


def two_node_cluster():
    """A Ray head (the fronts' node, with the `front_node` resource) and one node with `bench_node`."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"front_node": 1},
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"bench_node": 1})
    cluster.wait_for_nodes()
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default, meaning in (("--requests", 200, "latency samples per front and request kind"),
                                   ("--streams", 20, "streams per variant"), ("--max-tokens", 64, "tokens per stream")):
        parser.add_argument(flag, type=int, default=default, help=meaning)
    parser.add_argument("--model", help="a GGUF file; default: the bundled SmolLM2-135M-Instruct")
    args = parser.parse_args()
    exit_on_sigterm()
    model = args.model or default_model_path()
    banned = end_of_generation_tokens(model)
    spec = f"model_id={model} model_name=bench threads=1 max_sequences=2 cache_size=4096"
    load_before = os.getloadavg()[0]
    cluster = two_node_cluster()
    fronts = {"local worker": front("gallama-local", spec),
              "Ray node worker": front("gallama-ray", f"{spec} ray_resources=bench_node:1", "--ray", cluster.address,
                                       "-id", f"{spec.replace('name=bench', 'name=bench-here')} ray_resources=front_node:1")}
    try:
        for server in fronts.values():
            server.start()
        print("latency ...", flush=True)
        times = latency(fronts, args.requests)
        print("streams ...", flush=True)
        local_front, ray_front = fronts.values()
        # An Origin header makes the front relay a local stream too (gallama.router.handover.wants_handover).
        variants = {"local worker, handed over": (local_front, {}, "bench"),
                    "local worker, relayed (Origin header)": (local_front, {"origin": "http://bench"}, "bench"),
                    "Ray worker on the front's node, handed over": (ray_front, {}, "bench-here"),
                    "Ray worker on another node, relayed": (ray_front, {}, "bench")}
        stream_stats = asyncio.run(streams(variants, args.streams, args.max_tokens, banned))
    finally:
        for server in fronts.values():
            server.stop()
        cluster.shutdown()

    local, remote = fronts
    lines = [
        f"Run {today()} on {machine_description()}; {versions('gallama', 'llama-cpp-python', 'ray')}. "
        f"1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run: other work "
        "shares these cores, so a single run is noisy: compare rows of one run, and repeat it.",
        f"Model: `{Path(model).name}`, one thread per instance. Command: `python bench/ray_overhead.py --requests "
        f"{args.requests} --streams {args.streams} --max-tokens {args.max_tokens}`. Both nodes of the Ray cluster "
        "are on this machine: no network between them, so this is the front's own cost, not a network's. The "
        "workers differ in more than placement: Ray starts its worker processes at nice 15 with OMP_NUM_THREADS=1, "
        "in a session other than the front's (Linux schedules each session as a group).",
        "",
        f"### Requests ({args.requests} per front, alternating, one client), ms median / p95",
        "",
        f"| request | {local} | {remote} | added by Ray placement at the median |",
        "|---|---|---|---|",
    ]
    for kind, samples in times.items():
        a, b = samples[local], samples[remote]
        lines.append(f"| {kind} | {fmt(median(a), 2)} / {fmt(percentile(a, 95), 2)} | "
                     f"{fmt(median(b), 2)} / {fmt(percentile(b, 95), 2)} | {fmt(median(b) - median(a), 2)} |")
    lines += [
        "",
        f"### Streams ({args.streams} per variant, {args.max_tokens} tokens, alternating)",
        "",
        "| worker | time to first token (median) | decode tokens/s (median) | front CPU per token (all streams) |",
        "|---|---|---|---|",
    ]
    for label, stats in stream_stats.items():
        lines.append(f"| {label} | {fmt(median(stats['ttft']), 1)} ms | {fmt(median(stats['rate']), 1)} | "
                     f"{fmt(stats['cpu_s'] * 1000 / stats['tokens'], 3)} ms |")
    body = "\n".join(lines)
    print(body)
    write_section("Ray placement overhead (bench/ray_overhead.py)", body)


if __name__ == "__main__":
    main()
