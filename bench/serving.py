"""Serving benchmark: gallama against llama.cpp's llama-server and llama-cpp-python's server (issue 8).

All three serve the same GGUF with the same thread count and the same context
per sequence, in the same run; their measurements are interleaved (single-stream
and JSON requests prompt by prompt, concurrent blocks block by block, the engine
order rotating every round) so that they share the machine's conditions. For each: single-stream decode tokens/s, time to first token (median,
p95), aggregate tokens/s at 1, 4, 8 and 16 concurrent streams, decode tokens/s
under a small JSON schema (`response_format` `json_schema`) and the peak RSS of
the server's process tree; then the ratios gallama/peer.

Requests: streaming chat, temperature 0, end-of-generation tokens banned with
`logit_bias`, so every unconstrained request decodes exactly --max-tokens tokens.

    python bench/serving.py [--max-tokens 128] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

# llama-server-fa-on: llama-server with its default flash attention (on), for reference; the goals
# compare with llama-server running gallama's CPU default (off), the same kernels.
ENGINES = ["gallama", "llama-server", "llama-cpp-python", "llama-server-fa-on"]
JSON_PROMPTS = [
    "Invent a person and describe them as JSON with their name, age, city and hobbies.",
    "Describe a fictional scientist as JSON: name, age, city and a list of hobbies.",
    "Give me a JSON profile of a made-up chef with name, age, city and hobbies.",
]
JSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": common.PERSON_SCHEMA, "strict": True},
}


def start_servers(args, model_path: str) -> dict[str, common.Server]:
    servers: dict[str, common.Server] = {}
    context = args.context_per_slot
    for name in args.engines:
        if name == "gallama":
            server = common.gallama_server(
                model_path, args.threads, args.slots, "--cache-size", str(args.slots * context)
            )
        elif name.startswith("llama-server"):
            attention = () if name == "llama-server-fa-on" else common.LLAMA_SERVER_FLASH_ATTENTION_OFF
            binary = args.llama_server or common.llama_server_binary()
            server = common.llama_server(binary, model_path, args.threads, args.slots, context, *attention)
            server.name = name
        else:
            server = common.llama_cpp_python_server(model_path, args.threads, context)
        servers[name] = server
        print(f"[{name}] starting: {' '.join(server.command)}", file=sys.stderr)
        server.start()
        print(f"[{name}] ready in {server.started_s:.1f}s", file=sys.stderr)
    return servers


async def concurrent(client, server, prompts: list[str], payload_extra: dict, max_tokens: int, banned):
    began = time.perf_counter()
    results = await asyncio.gather(
        *(common.stream_chat(client, server.base_url, common.chat_payload(p, max_tokens, banned, **payload_extra)) for p in prompts)
    )
    return results, time.perf_counter() - began


def check(name: str, results: list[common.StreamResult], expected: int | None, problems: list[str]) -> None:
    for r in results:
        if r.error or r.status != 200:
            problems.append(f"{name}: HTTP {r.status} {r.error}")
        elif expected is not None and r.tokens != expected:
            problems.append(f"{name}: {r.tokens} tokens instead of {expected} (finish {r.finish_reason})")


async def measure(args, servers: dict[str, common.Server], banned: list[int]) -> dict:
    first_token = {"first": defaultdict(list), "cached": defaultdict(list)}  # prompt seen before? -> engine -> s
    aggregate = defaultdict(lambda: defaultdict(list))  # engine -> streams -> tok/s per round
    # engine -> round -> "decode" (single-stream requests) or "json" (JSON-schema requests) -> StreamResults
    in_round = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    json_errors: dict[str, str] = {}
    problems: list[str] = []
    busy: list[float] = []  # other work's CPU use (cores) before each measurement block
    cpu = {name: 0.0 for name in servers}  # server CPU seconds spent in measured requests
    tokens = {name: 0 for name in servers}

    async def timed(name, work):
        before = servers[name].cpu_seconds()
        results = await work
        cpu[name] += servers[name].cpu_seconds() - before
        flat = results[0] if isinstance(results, tuple) else results
        tokens[name] += sum(r.tokens for r in (flat if isinstance(flat, list) else [flat]) if not r.error)
        return results

    def quiet():
        if args.quiet_wait > 0:
            busy.append(common.wait_for_quiet(args.quiet_cores, args.quiet_wait))

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        for name, server in servers.items():  # warm-up
            await common.stream_chat(client, server.base_url, common.chat_payload(common.PROMPTS[0], 8, banned))
        for round_index in range(args.rounds):
            shift = round_index % len(servers)
            order = list(servers)[shift:] + list(servers)[:shift]
            quiet()
            # Prompt by prompt, each engine in turn: the pairs compared run seconds apart (this machine's speed
            # moves by 15% within minutes, which engine-long blocks would take for a difference between engines).
            for number, prompt in enumerate(common.PROMPTS):
                for name in order:
                    # Each prompt twice: first seen (a request number no server has read before leads it, so
                    # only the chat template's opening is cached), then again word for word (all of it cached).
                    payload = common.chat_payload(f"Request {round_index}.{number}.{name}: {prompt}", args.max_tokens, banned)
                    for seen in ("first", "cached"):
                        # An idle server: llama.cpp's OpenMP threads spin for a while after a decode,
                        # and would slow the next request's HTTP and template work.
                        await asyncio.sleep(args.settle)
                        result = await timed(name, common.stream_chat(client, servers[name].base_url, payload))
                        check(name, [result], args.max_tokens, problems)
                        in_round[name][round_index]["decode"].append(result)
                        first_token[seen][name].append(result.first_token_s)
            for streams in args.concurrency:
                prompts = [common.PROMPTS[(i + round_index) % len(common.PROMPTS)] for i in range(streams)]
                quiet()
                for name in order:
                    results, wall = await timed(name, concurrent(client, servers[name], prompts, {}, args.max_tokens, banned))
                    check(f"{name} x{streams}", results, args.max_tokens, problems)
                    aggregate[name][streams].append(sum(r.tokens for r in results if not r.error) / wall)
            quiet()
            for prompt in JSON_PROMPTS:
                for name in order:
                    if name in json_errors:
                        continue
                    payload = common.chat_payload(prompt, args.max_tokens, banned, response_format=JSON_FORMAT)
                    result = await timed(name, common.stream_chat(client, servers[name].base_url, payload))
                    if result.error or result.status != 200:
                        json_errors[name] = f"HTTP {result.status}: {(result.error or '')[:160]}"
                        continue
                    in_round[name][round_index]["json"].append(result)
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    return {
        "in_round": in_round, "first_token": first_token, "aggregate": aggregate, "json_errors": json_errors,
        "problems": problems, "busy": busy, "cpu_ms_per_token": {n: 1000 * cpu[n] / max(tokens[n], 1) for n in servers},
    }


def every_round(data: dict, name: str, key: str) -> list[common.StreamResult]:
    """An engine's single-stream ("decode") or JSON-schema ("json") results of all rounds."""
    return [r for by_key in data["in_round"][name].values() for r in by_key[key]]


def json_validity(results: list[common.StreamResult]) -> str:
    import json

    valid = 0
    for r in results:
        try:
            value = json.loads(r.text)
            valid += isinstance(value, dict) and set(common.PERSON_SCHEMA["required"]) <= set(value)
        except ValueError:
            pass
    return f"{valid}/{len(results)}"


def report(args, data: dict, peaks: dict[str, float], command: str) -> None:
    engines = list(peaks)
    rows = {}
    tokenizer = common.VocabTokenizer(args.model or common.default_model_path())
    for name in engines:
        singles, constrained = every_round(data, name, "decode"), every_round(data, name, "json")
        common.count_first_chunk_tokens(singles + constrained, tokenizer)
        rows[name] = {
            "decode": common.median([r.decode_tokens_per_s for r in singles]),
            "ttft": common.median([r.first_token_s * 1000 for r in singles if r.first_token_s is not None]),
            "ttft95": common.percentile([r.first_token_s * 1000 for r in singles if r.first_token_s is not None], 95),
            **{f"ttft_{seen}": common.median([t * 1000 for t in data["first_token"][seen][name] if t is not None])
               for seen in ("first", "cached")},
            **{f"agg{c}": common.median(data["aggregate"][name][c]) for c in args.concurrency},
            "json": common.median([r.decode_tokens_per_s for r in constrained]) if constrained else None,
            "json_tokens": common.median([r.tokens for r in constrained]) if constrained else None,
            "json_valid": json_validity(constrained) if constrained else None,
            "mem": peaks[name],
            "cpu": data["cpu_ms_per_token"][name],
        }
    columns = [("decode", "single-stream decode tok/s"), ("ttft", "TTFT median ms"), ("ttft95", "TTFT p95 ms"),
               ("ttft_first", "TTFT median ms, prompt first seen"), ("ttft_cached", "TTFT median ms, prompt cached")]
    columns += [(f"agg{c}", f"aggregate tok/s, {c} stream{'s' if c > 1 else ''}") for c in args.concurrency]
    columns += [("json", "JSON-schema decode tok/s"), ("mem", "peak RSS MiB"), ("cpu", "server CPU ms per generated token")]

    def cell(name, key):
        if key == "json" and rows[name]["json"] is None:
            error = data["json_errors"].get(name, "no result")
            return "not available yet (gallama: " + error + ")" if name == "gallama" else f"error: {error}"
        if key == "json":
            return f"{common.fmt(rows[name]['json'])} ({common.fmt(rows[name]['json_tokens'], 0)} tokens, {rows[name]['json_valid']} valid)"
        return common.fmt(rows[name][key], 0 if key == "mem" else 1)

    busy = data["busy"]
    load_note = (
        f"CPU use by other work before the measurement blocks: median {common.fmt(common.median(busy), 2)} cores, "
        f"max {common.fmt(max(busy), 2)} of {os.cpu_count()} (each block waited up to {args.quiet_wait:.0f}s "
        f"for under {args.quiet_cores} cores)."
        if busy else "No waiting for a quiet machine (--quiet-wait 0)."
    )

    table = ["| metric | " + " | ".join(engines) + " |", "|---" * (len(engines) + 1) + "|"]
    for key, label in columns:
        table.append(f"| {label} | " + " | ".join(cell(n, key) for n in engines) + " |")
    ratio_lines = []
    peers = [n for n in engines if n != "gallama"]
    if "gallama" in rows and peers:
        ratio_table = ["| gallama / peer | " + " | ".join(peers) + " |", "|---" * (len(peers) + 1) + "|"]
        for key, label in columns:
            ratio_table.append(
                f"| {label} | " + " | ".join(common.fmt(common.ratio(rows["gallama"][key], rows[p][key]), 2) for p in peers) + " |"
            )
        ratio_lines = ratio_table
    goals = goal_lines(rows, round_ratios(data, engines, args))
    if data["busy"] and common.median(data["busy"]) > 0.5:
        goals.append(
            f"- **Not a clean run**: other work kept {common.fmt(common.median(data['busy']), 2)} of {os.cpu_count()} "
            "cores busy (median), so every engine ran starved and these verdicts are not reliable."
        )
    problems = sorted(set(data["problems"]))
    text_table, text_ratios = "\n".join(table), "\n".join(ratio_lines)
    print(text_table)
    print()
    print(text_ratios)
    print()
    print("\n".join(goals))
    if problems:
        print("problems:\n" + "\n".join(problems[:20]))
    body = f"""
gallama against llama.cpp's `llama-server` and llama-cpp-python's server
(`python -m llama_cpp.server`) on the same GGUF, same prompts, same threads, in
the same run (issue 8).

- Date: {common.today()}
- Machine: {common.machine_description()}; shared with other engineers' builds
  and test runs, so numbers are noisy: the engines' measurements are interleaved
  (single-stream and JSON requests prompt by prompt, concurrent blocks block by block,
  the order rotating every round) and medians are reported.
- Command: `{command}`
- Versions: {common.versions("gallama", "llama-cpp-python", "fastapi", "uvicorn", "llguidance")};
  llama-server built from the llama.cpp sources vendored in the llama-cpp-python
  sdist of the same version (`bench/build_llama_server.sh`).
- Model: SmolLM2-135M-Instruct Q4_1 (the bundled default). All engines without
  weight repacking (gallama `use_extra_bufts = False`, `llama-server --no-repack`,
  llama-cpp-python through `bench/lcp_norepack.py`), flash attention off (gallama's CPU
  default, see the flash-attention section; `-fa off`, `--flash_attn false`), except the
  `llama-server-fa-on` column: llama-server as it runs by default (flash attention on), for reference.
- Servers: gallama `--threads {args.threads} --max-sequences {args.slots} --cache-size {args.slots * args.context_per_slot}`;
  llama-server `--threads {args.threads} --threads-batch {args.threads} -np {args.slots} -c {args.slots * args.context_per_slot} --no-repack`;
  llama-cpp-python `--n_threads {args.threads} --n_threads_batch {args.threads} --n_ctx {args.context_per_slot}`
  (one sequence: it does not batch). {args.context_per_slot} tokens of context per sequence everywhere.
- Work per round: {len(common.PROMPTS)} single-stream prompts, each sent twice (first seen: led by a request
  number no server has read; then the same again, cached), then {", ".join(map(str, args.concurrency))} concurrent
  streams (each a different prompt), then {len(JSON_PROMPTS)} JSON-schema requests; {args.rounds} rounds.
  Streaming chat, temperature 0, {args.max_tokens} tokens per request with the end-of-generation
  tokens banned by `logit_bias` (JSON-schema requests end when the schema's JSON is complete).
  Decode tok/s = (tokens - tokens of the first chunk) / (last chunk time - first chunk time) of
  one stream (the first chunk's tokens counted with the model's tokenizer: llama-server holds
  back about 10 tokens under a JSON schema and sends them in its first chunk);
  TTFT = request sent to first content chunk, single stream, each request sent after
  {args.settle} s of idle (llama.cpp's OpenMP threads spin for a while after a decode); aggregate = all tokens of
  the concurrent streams / wall time from the first request sent to the last stream's end
  (prefill included). Peak RSS: the server's whole process tree, sampled every 50 ms,
  over the whole run. Server CPU per token: the CPU time (user + system) of the
  server's process tree during the measured requests over the tokens it generated
  (prefill included); less sensitive to the machine's load than wall time.
- {load_note}

{text_table}

Ratios gallama / peer (above 1 is better for gallama, except TTFT and memory):

{text_ratios}

Goals (issues 8 and 24; "by round": the same ratio from each round's own medians, the spread one run's
machine gives it):

{chr(10).join(goals)}
"""
    if problems:
        body += "\nProblems seen during the run:\n\n" + "\n".join(f"- {p}" for p in problems[:20]) + "\n"
    common.write_section("Serving: gallama vs llama-server vs llama-cpp-python's server", body)


def round_ratios(data: dict, engines: list[str], args) -> dict[str, list[float]]:
    """gallama / llama-server of the wall-time goals, round by round (each engine's median in that round):
    how far one run's ratios move with the machine, which decides how close to a goal a verdict can be."""
    if "gallama" not in engines or "llama-server" not in engines:
        return {}

    def per_round(name: str, key: str) -> list[float | None]:
        values = []
        for round_index in range(args.rounds):
            if key in ("decode", "json"):
                results = data["in_round"][name][round_index][key]
                values.append(common.median([r.decode_tokens_per_s for r in results]))
            else:  # aggregate, one value a round
                streams = data["aggregate"][name][int(key[3:])]
                values.append(streams[round_index] if round_index < len(streams) else None)
        return values

    keys = ["decode", "json", *(f"agg{c}" for c in args.concurrency)]
    return {key: [r for r in map(common.ratio, per_round("gallama", key), per_round("llama-server", key)) if r]
            for key in keys}


def goal_lines(rows: dict, by_round: dict[str, list[float]]) -> list[str]:
    g, ls, lcp = rows.get("gallama"), rows.get("llama-server"), rows.get("llama-cpp-python")
    if g is None:
        return []

    def goal(label, value, target, higher_is_better=True, key=None):
        if value is None:
            return f"- {label}: n/a (not measured)"
        met = value >= target if higher_is_better else value <= target
        sign = ">=" if higher_is_better else "<="
        spread = by_round.get(key)
        rounds = f"; by round {min(spread):.2f}-{max(spread):.2f}" if spread and len(spread) > 1 else ""
        return f"- {label}: {value:.3f} (goal {sign} {target}{rounds}): {'met' if met else 'missed'}"

    lines = []
    if ls:  # issue 24's goals against llama-server
        ratio = lambda key: common.ratio(g.get(key), ls.get(key))  # noqa: E731
        lines.append(goal("single-stream decode, gallama / llama-server", ratio("decode"), 1.0, key="decode"))
        lines.append(goal("TTFT median (prompt first seen), gallama / llama-server", ratio("ttft_first"), 1.0,
                          higher_is_better=False))
        lines.append(goal("TTFT median (prompt cached), gallama / llama-server", ratio("ttft_cached"), 1.0,
                          higher_is_better=False))
        lines.append(goal("8 streams aggregate, gallama / llama-server", ratio("agg8"), 1.05, key="agg8"))
        lines.append(goal("16 streams aggregate, gallama / llama-server", ratio("agg16"), 1.0, key="agg16"))
        lines.append(goal("JSON-schema decode, gallama / llama-server", ratio("json"), 1.05, key="json"))
        lines.append(goal("peak RSS, gallama / llama-server", ratio("mem"), 1.1, higher_is_better=False))
    if lcp:
        lines.append(goal("8 streams aggregate, gallama / llama-cpp-python", common.ratio(g.get("agg8"), lcp.get("agg8")), 3.0))
    lines.append(goal("JSON-schema decode, gallama / gallama unconstrained", common.ratio(g["json"], g["decode"]), 0.9))
    return lines


async def run(args) -> None:
    model_path = args.model or common.default_model_path()
    banned = common.end_of_generation_tokens(model_path)
    servers: dict[str, common.Server] = {}
    peaks: dict[str, float] = {}
    try:
        servers = start_servers(args, model_path)
        data = await measure(args, servers, banned)
    finally:
        for name, server in servers.items():
            peaks[name] = server.stop()
    command = "python bench/serving.py " + " ".join(sys.argv[1:])
    report(args, data, peaks, command.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file; default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--llama-server", help="the llama-server binary; default: bench/build_llama_server.sh's")
    parser.add_argument("--engines", type=lambda s: s.split(","), default=ENGINES, help="comma-separated subset of " + ",".join(ENGINES))
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    # 8: the 8-stream goal is against llama-server with 8 slots (16 streams then queue on both).
    # With 16, llama-server's unified KV cache spans twice the cells and it ran 10-20% slower here.
    parser.add_argument("--slots", type=int, default=8, help="parallel sequences of gallama and llama-server")
    parser.add_argument("--context-per-slot", type=int, default=4096)
    parser.add_argument("--settle", type=float, default=0.5, help="seconds of idle before each single-stream request")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait for a quiet machine before each block (0: never)")
    parser.add_argument("--quiet-cores", type=float, default=0.3, help="CPU use by others (cores) that counts as quiet")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4, 8, 16])
    args = parser.parse_args()
    common.exit_on_sigterm()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
