"""llama.cpp's flash attention on and off, on this machine: what gallama's CPU default rests on.

For each setting, on the same GGUF and threads, one llama.cpp context (per-sequence
KV streams, as gallama's engine runs them):

- decode step time of one sequence at several context lengths, for 1 row (a plain
  step) and 6 rows (a step verifying 5 drafts);
- prompt prefill time;
- batch invariance: greedy output of 4 chat requests run one at a time and then all
  together in gallama's engine (the same tokens, or not).

    python bench/flash_attention.py [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from gallama.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from gallama.engines.llama_cpp.engine import LlamaCppEngine  # noqa: E402
from gallama.engines.llama_cpp.setup import load_model, new_context  # noqa: E402
from gallama.engines.llama_cpp.batch import TokenBatch  # noqa: E402

CONTEXTS = (50, 450, 1000, 2000)
PREFILLS = (40, 500, 1500)
STORY = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a can of oil and a small "
    "notebook in which he wrote down the ships he saw, the weather, and the colour of the sea. One stormy night "
    "in November a bottle washed up on the rocks below the tower, green, sealed with red wax and covered in "
    "barnacles. He carried it up to the lamp room and looked at it for a long time while the rain hammered on. "
)
TASKS = [f"Summarize this story: {STORY * 2}", "Write a story about a dragon.",
         f"List the objects in this story: {STORY * 2}", "Explain photosynthesis."]


def step_times(model, flash: bool | None, threads: int, rounds: int, cache_quant: str | None = None,
               cache_quant_v: str | None = None) -> dict:
    ctx = new_context(model, n_ctx=4096, max_sequences=1, n_threads=threads, n_batch=512, unified_kv=False,
                      cache_quant=cache_quant, cache_quant_v=cache_quant_v, flash_attention=flash)
    memory = llama_cpp.llama_get_memory(ctx.ctx)
    batch = TokenBatch(512)
    tokens = [int(t) for t in np.random.default_rng(0).integers(100, 20000, max(CONTEXTS) + 16)]

    def fill(length: int) -> float:
        llama_cpp.llama_memory_seq_rm(memory, 0, 0, -1)
        started = time.perf_counter()
        for start in range(0, length, 512):
            batch.clear()
            batch.add(tokens[start:min(length, start + 512)], start, 0, "last")
            batch.decode(ctx.ctx)
        return time.perf_counter() - started

    def step(length: int, rows: int) -> float:
        batch.clear()
        batch.add(tokens[length:length + rows], length, 0, "all")
        started = time.perf_counter()
        batch.decode(ctx.ctx)
        elapsed = time.perf_counter() - started
        llama_cpp.llama_memory_seq_rm(memory, 0, length, -1)
        return elapsed

    result = {"prefill": {n: min(fill(n) for _ in range(rounds)) for n in PREFILLS}, "step": {}}
    for length in CONTEXTS:
        fill(length)
        for rows in (1, 6):
            result["step"][length, rows] = statistics.median(step(length, rows) for _ in range(rounds * 4))
    ctx.close()
    return result


async def batch_invariant(model_path: str, flash: bool | None, threads: int, cache_quant: str | None = None,
                          cache_quant_v: str | None = None, tasks: list[str] = TASKS) -> str:
    engine = LlamaCppEngine(model_path, max_sequences=4, cache_size=4 * 2048, n_threads=threads, flash_attention=flash,
                            cache_quant=cache_quant, cache_quant_v=cache_quant_v)
    try:
        async def greedy(task: str) -> list[int]:
            tokens = engine.tokenize(f"<|im_start|>user\n{task}<|im_end|>\n<|im_start|>assistant\n")
            request = GenerationRequest(tokens, 120, SamplingParams(temperature=0.0))
            return [event.token async for event in engine.generate(request)]

        alone = [await greedy(task) for task in tasks]
        together = await asyncio.gather(*(greedy(task) for task in tasks))
        return f"{sum(a == b for a, b in zip(alone, together))}/{len(tasks)}"
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file; default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model_path = args.model or common.default_model_path()
    model = load_model(model_path)
    runs = {flash: step_times(model, flash, args.threads, args.rounds) for flash in (True, False)}
    same = {flash: asyncio.run(batch_invariant(model_path, flash, args.threads)) for flash in (True, False)}

    lines = ["| measure | flash attention on | off | on / off |", "|---|---|---|---|"]
    for length in CONTEXTS:
        for rows in (1, 6):
            on, off = runs[True]["step"][length, rows], runs[False]["step"][length, rows]
            label = "one-token step" if rows == 1 else "step verifying 5 drafts (6 rows)"
            lines.append(f"| {label}, {length} tokens of context | {on * 1000:.1f} ms | {off * 1000:.1f} ms | {on / off:.2f} |")
    for n in PREFILLS:
        on, off = runs[True]["prefill"][n], runs[False]["prefill"][n]
        lines.append(f"| prefill of {n} tokens | {on * 1000:.0f} ms | {off * 1000:.0f} ms | {on / off:.2f} |")
    lines.append(f"| greedy output alone = beside 3 other requests | {same[True]} | {same[False]} | |")
    table = "\n".join(lines)
    print(table)
    command = ("python bench/flash_attention.py " + " ".join(sys.argv[1:])).strip()
    common.write_section("llama.cpp flash attention on and off (bench/flash_attention.py)", f"""
Run {common.today()} on {common.machine_description()}; {common.versions("llama-cpp-python")}.
Command: `{command}`. Model: `{Path(model_path).name}`, {args.threads} threads, one context with
per-sequence KV streams as gallama's engine makes it; step times are medians of {args.rounds * 4}
decodes, prefill the best of {args.rounds}; the batch-invariance row runs 4 chat requests (2 with
~330-token prompts) through gallama's engine one at a time, then together, 120 greedy tokens each.

{table}
""")


if __name__ == "__main__":
    main()
