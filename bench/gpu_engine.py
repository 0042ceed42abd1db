"""The llama.cpp engine with every layer on a GPU: batch invariance, decode speed, speculation.

Engine level (no HTTP), so that it runs where only llama-cpp-python (a CUDA build), llguidance and
numpy are installed, as on a lent GPU machine:

    python bench/gpu_engine.py --model SmolLM2.gguf [--gpu-gb 80] [--max-tokens 128] [--rounds 3]

Reports: whether greedy output is the same alone and beside other requests (prompts past 512
tokens included), single-stream decode tokens/s against llama-cpp-python's own `Llama.generate` on
the same GPU (rounds alternated, medians), 8-stream decode tokens/s (also with `unified_kv`), and n-gram speculation's
speed-up on a rewrite (greedy, as llama.cpp's own verify batch makes it) with how many outputs equal
the plain ones. Prints a markdown section to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gallama.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from gallama.engines.llama_cpp.engine import LlamaCppEngine  # noqa: E402
import llama_cpp  # noqa: E402,I001
from alternated import alternated, comparison  # noqa: E402 (bench/ is not a package)

TEXT = ("My sister loves to travel. Every summer she visits a new country, learns a few words of its "
        "language and sends us postcards. Last year she went to Portugal and stayed in a small town by the sea.")
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    f"Summarize this text in one sentence: {TEXT * 12}",  # past 512 tokens of context
    "List ten facts about the moon.",
]
REWRITE = f"Rewrite the following text word for word, changing only the word 'sister' to 'brother':\n\n{TEXT}"


def chat(engine: LlamaCppEngine, text: str) -> list[int]:
    return engine.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


async def run(engine: LlamaCppEngine, tokens: list[int], max_tokens: int, ban_end: bool = False):
    bias = {t: -100.0 for t in range(engine.vocab_size) if engine.is_end_of_generation(t)} if ban_end else {}
    request = GenerationRequest(list(tokens), max_tokens, SamplingParams(temperature=0, logit_bias=bias))
    first = None
    out = []
    async for event in engine.generate(request):
        first = first or time.perf_counter()
        out.append(event.token)
    return out, first, time.perf_counter(), event


async def invariance(engine: LlamaCppEngine, max_tokens: int) -> tuple[int, int]:
    prompts = [chat(engine, p) for p in PROMPTS]
    alone = [(await run(engine, p, max_tokens))[0] for p in prompts]
    together = await asyncio.gather(*(run(engine, p, max_tokens) for p in prompts))
    return sum(a == t[0] for a, t in zip(alone, together)), len(prompts)


async def decode_rate(engine: LlamaCppEngine, streams: int, max_tokens: int) -> float:
    """Tokens after each stream's first, over the time from the first first token to the last token."""
    prompts = [chat(engine, f"{n}: {PROMPTS[n % len(PROMPTS)]}") for n in range(streams)]
    results = await asyncio.gather(*(run(engine, p, max_tokens, ban_end=True) for p in prompts))
    return sum(len(r[0]) - 1 for r in results) / (max(r[2] for r in results) - min(r[1] for r in results))


async def decode_twice(engine: LlamaCppEngine, max_tokens: int) -> tuple[float, float]:
    """8-stream decode rates of the same 8 prompts, the first time and again."""
    return await decode_rate(engine, 8, max_tokens), await decode_rate(engine, 8, max_tokens)


def raw_rate(llm, tokens: list[int], max_tokens: int) -> float:
    """llama-cpp-python's own loop (`Llama.generate`, greedy, end tokens not stopping it) over the same prompt."""
    times = []
    for _ in llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        times.append(time.perf_counter())
        if len(times) == max_tokens:
            break
    return (len(times) - 1) / (times[-1] - times[0])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="GB of the first GPU the engine may use (gpus=)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the single-stream comparison with Llama.generate")
    args = parser.parse_args()
    common = {"max_sequences": 8, "cache_size": 8 * 2048, "gpus": [args.gpu_gb], "flash_attention": False}
    lines = [f"## GPU engine check ({args.model.rsplit('/', 1)[-1]}, gpus=[{args.gpu_gb:g}])", ""]
    plain = LlamaCppEngine(args.model, **common)
    try:
        lines.append(f"- placement: {plain.facts().placement}")
        await run(plain, chat(plain, "Hi"), 8)  # warm-up
        same, total = await invariance(plain, args.max_tokens)
        lines.append(f"- greedy output alone = beside 3 others: {same}/{total} prompts ({args.max_tokens} tokens)")
        llm = llama_cpp.Llama(model_path=args.model, n_gpu_layers=-1, n_ctx=4096, flash_attn=False, verbose=False)
        tokens = chat(plain, PROMPTS[0])

        async def ours() -> float:
            out, first, end, _ = await run(plain, tokens, args.max_tokens, ban_end=True)
            return (len(out) - 1) / (end - first)

        try:
            rates = await alternated(args.rounds, ours, lambda: raw_rate(llm, tokens, args.max_tokens))
        finally:
            llm.close()
        lines.append(comparison("`Llama.generate`", *rates))
        # The first time, llama.cpp captures a CUDA graph for each batch shape it meets while streams join.
        first, again = await decode_twice(plain, args.max_tokens)
        lines.append(f"- 8 streams: {again:.0f} tokens/s in all ({first:.0f} the first time, graphs captured)")
        base_tokens, base_first, base_end, _ = await run(plain, chat(plain, REWRITE), args.max_tokens)
    finally:
        plain.close()
    # The same 8 prompts again find their conversations in idle slots: a unified cache must not save them
    # to host memory first (its interleaved cells took seconds a save: prompt_cache.default_prompt_cache_mb).
    unified = LlamaCppEngine(args.model, unified_kv=True, **common)
    try:
        await run(unified, chat(unified, "Hi"), 8)
        first, again = await decode_twice(unified, args.max_tokens)
        lines.append(f"- 8 streams, unified_kv: {first:.0f} tokens/s, the same prompts again {again:.0f}")
    finally:
        unified.close()
    drafted = LlamaCppEngine(args.model, draft_mode="ngram", **common)
    try:
        await run(drafted, chat(drafted, "Hi"), 8)
        tokens, first, end, last = await run(drafted, chat(drafted, REWRITE), args.max_tokens)
    finally:
        drafted.close()
    plain_rate, drafted_rate = (len(base_tokens) - 1) / (base_end - base_first), (len(tokens) - 1) / (end - first)
    lines.append(
        f"- n-gram speculation on the rewrite: {plain_rate:.0f} -> {drafted_rate:.0f} "
        f"tokens/s ({drafted_rate / plain_rate:.2f}x), {last.accepted}/{last.drafted} "
        f"drafts kept, output {'equal to' if tokens == base_tokens else 'different from'} the plain one"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
