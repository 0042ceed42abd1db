"""gallama's transformers backend against transformers' own `generate` and `transformers serve` (issue 22).

All serve one Hugging Face folder made once from the bundled SmolLM2-135M GGUF (dequantized, fp32,
under ~/.cache/gallama-bench), on the same threads, in one run, rounds interleaved:
- gallama: `gallama serve -id "model_id=FOLDER backend=transformers"`, 8 sequences;
- `generate`: `AutoModelForCausalLM.generate` in this process, one stream (greedy, `min_new_tokens`);
- `transformers serve --force-model FOLDER --dtype float32`: its continuous batching
  (`--continuous_batching`) sizes its paged cache from CUDA memory and fails on a CPU
  (transformers 4.57: `get_available_memory` gets no total), so it runs without: each request
  its own `generate` in a thread.
Measured: single-stream decode tok/s and TTFT, aggregate tok/s at 1/4/8 concurrent streams
(streaming chat, temperature 0, every request decodes exactly --max-tokens tokens: gallama bans
end-of-generation tokens with `logit_bias`, transformers serve gets `min_new_tokens`).

`--steps` instead measures the CPU time of one decode step of the engine's KV buffer against one
batched `DynamicCache` (what `generate` uses), 1 thread, at 1/4/8 rows.

    python bench/transformers_serving.py [--max-tokens 64] [--rounds 2] [--threads 2] [--steps]

Goals: single stream at least `generate`'s speed; 8 streams at least 3x one stream's aggregate;
above `transformers serve` at 8 streams.
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

FOLDER = common.CACHE_DIR / "smollm2-135m-instruct-hf"
STREAMS = (1, 4, 8)
PEERS = ("gallama", "transformers-serve")


def hf_folder() -> Path:
    """The bundled GGUF as a Hugging Face folder (as gallama loads it: fp32, byte-level decoder)."""
    if not (FOLDER / "model.safetensors").exists():
        from gallama.engines.transformers.loading import load

        loaded = load(common.default_model_path(), threads=None)
        loaded.model.save_pretrained(FOLDER)
        loaded.tokenizer.save_pretrained(FOLDER)
    return FOLDER


def servers(threads: int) -> dict[str, common.Server]:
    gallama_port, serve_port = common.free_port(), common.free_port()
    spec = f"model_id={FOLDER} model_name=bench backend=transformers threads={threads} max_sequences=8"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    return {
        "gallama": common.Server("gallama", [
            sys.executable, "-m", "gallama", "serve", "-id", spec, "--port", str(gallama_port), "--log-level", "warning",
        ], gallama_port),
        "transformers-serve": common.Server("transformers-serve", [
            sys.executable, "-m", "transformers.commands.transformers_cli", "serve", "--force-model", str(FOLDER),
            "--dtype", "float32", "--port", str(serve_port), "--log_level", "warning",
        ], serve_port, env=env),
    }


def payload(peer: str, prompt: str, max_tokens: int, banned: list[int]) -> dict:
    if peer == "gallama":
        return common.chat_payload(prompt, max_tokens, banned)
    body = common.chat_payload(prompt, max_tokens, [])
    del body["logit_bias"]  # transformers serve reads it as a sequence bias of another shape
    body["generation_config"] = f'{{"min_new_tokens": {max_tokens}, "max_new_tokens": {max_tokens}}}'
    return body


async def streams(server: common.Server, peer: str, count: int, args, banned, tokenizer) -> dict:
    prompts = [common.PROMPTS[i % len(common.PROMPTS)] for i in range(count)]
    cpu_before = server.cpu_seconds()
    async with httpx.AsyncClient(timeout=1800) as client:
        began = time.perf_counter()
        results = await asyncio.gather(*(common.stream_chat(client, server.base_url, payload(peer, p, args.max_tokens, banned))
                                         for p in prompts))
        wall = time.perf_counter() - began
    for result in results:
        if result.error or result.status != 200:
            raise RuntimeError(f"{peer}: HTTP {result.status} {result.error}")
        if result.completion_tokens is None:  # no usage: count the text's tokens
            result.completion_tokens = tokenizer.count(result.text)
    common.count_first_chunk_tokens(results, tokenizer)
    tokens = sum(r.tokens for r in results)
    return {"aggregate": tokens / wall, "cpu_ms_per_token": 1000 * (server.cpu_seconds() - cpu_before) / tokens,
            "ttft_ms": common.median([r.first_token_s * 1000 for r in results]),
            "decode": common.median([r.decode_tokens_per_s for r in results]),
            "tokens": [r.tokens for r in results]}


def generate_single(model, tokenizer, prompt: str, max_tokens: int) -> dict:
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt")
    timings, cpu = {}, 0.0
    for count in (1, max_tokens):
        began, cpu_began = time.perf_counter(), time.process_time()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=count, min_new_tokens=count,
                           do_sample=False, pad_token_id=tokenizer.eos_token_id)
        timings[count], cpu = time.perf_counter() - began, time.process_time() - cpu_began
    return {"ttft_ms": timings[1] * 1000, "decode": (max_tokens - 1) / (timings[max_tokens] - timings[1]),
            "cpu_ms_per_token": 1000 * cpu / max_tokens}


def run_serving(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_folder()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(FOLDER, dtype=torch.float32).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(FOLDER)
    tokenizer = common.VocabTokenizer(common.default_model_path())
    banned = common.end_of_generation_tokens(common.default_model_path())
    running = servers(args.threads)
    samples: dict[tuple[str, int], list[dict]] = defaultdict(list)
    try:
        for name, server in running.items():
            print(f"[{name}] starting", file=sys.stderr)
            server.start(timeout_s=600)
        for round_index in range(args.rounds):
            samples[("generate", 1)].append(generate_single(model, hf_tokenizer, common.PROMPTS[round_index], args.max_tokens))
            order = PEERS if round_index % 2 == 0 else PEERS[::-1]
            for count in STREAMS:
                for peer in order:
                    sample = asyncio.run(streams(running[peer], peer, count, args, banned, tokenizer))
                    samples[(peer, count)].append(sample)
                    print(f"round {round_index + 1} {peer} x{count}: {sample}", file=sys.stderr)
    finally:
        for server in running.values():
            server.stop()
    report(args, samples)


def report(args, samples) -> None:
    def med(peer: str, count: int, key: str) -> float | None:
        return common.median([s[key] for s in samples.get((peer, count), [])])

    rows = ["| | single-stream decode tok/s | TTFT ms (1 stream) | CPU ms per token (1 stream) | aggregate tok/s x1 | x4 | x8 | x8 / x1 |",
            "|---|---|---|---|---|---|---|---|",
            f"| `generate` | {common.fmt(med('generate', 1, 'decode'))} | {common.fmt(med('generate', 1, 'ttft_ms'), 0)} "
            f"| {common.fmt(med('generate', 1, 'cpu_ms_per_token'))} | | | | |"]
    for peer in PEERS:
        aggregates = [med(peer, count, "aggregate") for count in STREAMS]
        rows.append(f"| {peer} | {common.fmt(med(peer, 1, 'decode'))} | {common.fmt(med(peer, 1, 'ttft_ms'), 0)} | "
                    f"{common.fmt(med(peer, 1, 'cpu_ms_per_token'))} | "
                    + " | ".join(common.fmt(a) for a in aggregates)
                    + f" | {common.fmt(common.ratio(aggregates[-1], aggregates[0]), 2, 'x')} |")
    gallama_x8, serve_x8 = med("gallama", 8, "aggregate"), med("transformers-serve", 8, "aggregate")
    goals = [
        f"- single stream vs `generate`: {common.fmt(common.ratio(med('gallama', 1, 'decode'), med('generate', 1, 'decode')), 2, 'x')} (goal >= 1)",
        f"- 8 streams vs 1 (gallama aggregate): {common.fmt(common.ratio(gallama_x8, med('gallama', 1, 'aggregate')), 2, 'x')} (goal >= 3)",
        f"- 8 streams vs transformers serve: {common.fmt(common.ratio(gallama_x8, serve_x8), 2, 'x')} (goal > 1)",
    ]
    body = "\n".join([
        f"{common.today()}, `python bench/transformers_serving.py --max-tokens {args.max_tokens} --rounds {args.rounds} "
        f"--threads {args.threads}`{' (run under nice -n 19 beside other work: noisy)' if os.nice(0) > 0 else ''}; "
        f"{common.machine_description()}; {common.versions('torch', 'transformers')}. Medians of {args.rounds} rounds; "
        "SmolLM2-135M-Instruct as an fp32 HF folder; `transformers serve` without continuous batching (CPU: see the script).",
        "", *rows, "", *goals])
    print(body)
    if args.write:
        common.write_section("transformers backend vs generate and transformers serve", body)


def run_steps(args) -> None:
    """CPU time of a decode step: the engine's slot buffer vs one batched DynamicCache (generate's)."""
    import torch
    from transformers import DynamicCache

    from gallama.engines.transformers.kv_slots import SlotCache, attention_mask
    from gallama.engines.transformers.loading import load

    torch.set_grad_enabled(False)
    model = load(common.default_model_path(), threads=1).model
    forward = model.forward

    def timed(step) -> float:
        times = []
        for _ in range(args.repeats):
            began = time.process_time()
            step()
            times.append(time.process_time() - began)
        return common.median(times) * 1000

    def slots(rows: int, context: int) -> float:
        cache, lengths = SlotCache(model.config.num_hidden_layers, 8, 4096), []
        for row in range(rows):
            length = context - row  # unequal lengths, as a batch has
            plan = cache.plan([row], [0], length)
            forward(input_ids=torch.randint(0, 1000, (1, length)), position_ids=torch.arange(length)[None],
                    cache_position=torch.arange(length), attention_mask=attention_mask(plan, model.config, model.dtype),
                    past_key_values=cache, logits_to_keep=1)
            lengths.append(length)

        def step():
            plan = cache.plan(list(range(rows)), lengths, 1)
            forward(input_ids=torch.randint(0, 1000, (rows, 1)), position_ids=plan.starts[:, None],
                    cache_position=torch.arange(plan.width - 1, plan.width), past_key_values=cache,
                    attention_mask=attention_mask(plan, model.config, model.dtype))
            lengths[:] = [length + 1 for length in lengths]
        return timed(step)

    def dynamic(rows: int, context: int) -> float:
        cache = DynamicCache()
        forward(input_ids=torch.randint(0, 1000, (rows, context)), past_key_values=cache, logits_to_keep=1)
        return timed(lambda: forward(input_ids=torch.randint(0, 1000, (rows, 1)), past_key_values=cache))

    lines = ["| context | rows | slot buffer ms | one DynamicCache ms | slots x rows / x1 |", "|---|---|---|---|---|"]
    for context in (200, 1000):
        single = None
        for rows in STREAMS:
            ours, theirs = slots(rows, context), dynamic(rows, context)
            single = single or ours
            lines.append(f"| {context} | {rows} | {ours:.0f} | {theirs:.0f} | {ours / single:.2f}x |")
            print(lines[-1], file=sys.stderr)
    body = "\n".join([f"{common.today()}, `python bench/transformers_serving.py --steps`: CPU time (process_time) of one "
                      f"decode step, 1 thread, median of {args.repeats}; SmolLM2-135M fp32.", "", *lines])
    print(body)
    if args.write:
        common.write_section("transformers backend: decode step of the KV slot buffer", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", action="store_true", help="time decode steps instead of serving")
    parser.add_argument("--repeats", type=int, default=9, help="--steps: steps timed per point")
    parser.add_argument("--no-write", dest="write", action="store_false", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args()
    common.exit_on_sigterm()
    run_steps(args) if args.steps else run_serving(args)


if __name__ == "__main__":
    main()
