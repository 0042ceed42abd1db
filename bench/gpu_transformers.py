"""The transformers engine on a GPU: placement, batching, decode speed against transformers' own `generate`.

Engine level (no HTTP), so that it runs where only torch, transformers (<5), accelerate, gguf,
llguidance and numpy are installed, as on a lent GPU machine; the model is a GGUF file, which
transformers dequantizes (the bundled SmolLM2 by default):

    python bench/gpu_transformers.py --model SmolLM2.gguf [--gpu-gb 80] [--max-tokens 128] [--rounds 3]

Reports: where the engine placed the model and its dtype, whether greedy output has the same
length alone and beside other requests (bf16 kernels may pick other reductions for one row than
for several, so equality is counted, not required), single-stream decode tokens/s against
`model.generate` on the same device and dtype (rounds alternated, medians), and 8-stream decode
tokens/s. With --gpu-gb 0 it runs on the CPU (fp32), to check the script. Prints a markdown section;
with --profile, then torch profiler tables of the engine's decode steps and of `generate` (where a
step's time goes: launches, copies, waits on the GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gallama.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from gallama.engines.transformers.engine import TransformersEngine  # noqa: E402
from alternated import alternated, comparison  # noqa: E402 (bench/ is not a package)

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    "List ten facts about the moon.",
    "Describe a walk through a forest in autumn.",
]


def chat(engine: TransformersEngine, text: str) -> list[int]:
    return engine.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


async def run(engine: TransformersEngine, tokens: list[int], max_tokens: int) -> tuple[list[int], float, float]:
    """Greedy tokens (end of generation banned) and the times of the first and last."""
    bias = {t: -1e9 for t in engine._eog}
    request = GenerationRequest(list(tokens), max_tokens, SamplingParams(temperature=0, logit_bias=bias))
    out, first = [], None
    async for event in engine.generate(request):
        first = first or time.perf_counter()
        out.append(event.token)
    return out, first, time.perf_counter()


def generate_rate(model, tokens: list[int], max_tokens: int) -> float:
    """transformers' own loop on the engine's model: (max_tokens - 1) tokens over the time past the first."""
    import torch

    ids = torch.tensor([tokens], device=model.device)
    timings = {}
    for count in (1, max_tokens):
        began = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=count, min_new_tokens=count,
                           do_sample=False, pad_token_id=0)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        timings[count] = time.perf_counter() - began
    return (max_tokens - 1) / (timings[max_tokens] - timings[1])


def profiler(engine: TransformersEngine):
    """torch's profiler of host work, and of the GPU's where the engine runs on one."""
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if engine._device.type == "cuda" else []))


def profiled_steps(engine: TransformersEngine, steps: int):
    """Profiles `steps` steps on the engine's own thread (torch's profiler sees the thread that starts
    it), after the next one (a prompt's prefill); returns the profiler, ready once those steps ran."""
    steps_profiler, step, count = profiler(engine), engine._step, 0

    def step_under_profiler(members):
        nonlocal count
        if count == 1:
            steps_profiler.__enter__()
        step(members)
        count += 1
        if count == steps + 1:
            steps_profiler.__exit__(None, None, None)
            engine._step = step

    engine._step = step_under_profiler
    return steps_profiler


def table(finished, title: str) -> str:
    return f"### {title}\n" + finished.key_averages().table(sort_by="self_cpu_time_total", row_limit=14)


async def profile_both(engine: TransformersEngine, tokens: list[int], steps: int) -> str:
    ours = profiled_steps(engine, steps)
    await run(engine, tokens, steps + 8)
    with profiler(engine) as theirs:
        generate_rate(engine._model, tokens, steps)
    return "\n".join([table(ours, f"engine, {steps} steps"), table(theirs, f"generate, 1 + {steps} tokens")])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a GGUF file or a Hugging Face model folder")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="GB of the first GPU (gpus=); 0: the CPU")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="then profile this many single-stream decode steps of both")
    args = parser.parse_args()
    engine = TransformersEngine(args.model, max_sequences=8, gpus=[args.gpu_gb] if args.gpu_gb else None)
    facts = engine.facts()
    lines = [f"## transformers engine check ({args.model.rsplit('/', 1)[-1]}, gpus=[{args.gpu_gb:g}])", "",
             f"- placement: {facts.placement}; KV: {facts.kv_description}"]
    try:
        await run(engine, chat(engine, "Hi"), 8)  # warm-up
        prompts = [chat(engine, p) for p in PROMPTS]
        alone = [(await run(engine, p, args.max_tokens))[0] for p in prompts]
        together = [r[0] for r in await asyncio.gather(*(run(engine, p, args.max_tokens) for p in prompts))]
        lengths = sum(len(a) == len(t) == args.max_tokens for a, t in zip(alone, together))
        equal = sum(a == t for a, t in zip(alone, together))
        lines.append(f"- greedy output alone vs beside 3 others: {lengths}/{len(prompts)} full length, "
                     f"{equal}/{len(prompts)} equal ({args.max_tokens} tokens)")

        async def ours() -> float:
            tokens, first, last = await run(engine, prompts[0], args.max_tokens)
            return (len(tokens) - 1) / (last - first)

        rates = await alternated(args.rounds, ours, lambda: generate_rate(engine._model, prompts[0], args.max_tokens))
        lines.append(comparison("`generate`", *rates))
        results = await asyncio.gather(*(run(engine, chat(engine, f"{n}: {PROMPTS[n % 4]}"), args.max_tokens)
                                         for n in range(8)))
        wall = max(r[2] for r in results) - min(r[1] for r in results)
        lines.append(f"- 8 streams: {sum(len(r[0]) - 1 for r in results) / wall:.0f} tokens/s in all")
        if args.profile:
            lines.append(await profile_both(engine, prompts[1], args.profile))
    finally:
        engine.close()
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
