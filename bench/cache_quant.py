"""What a quantized KV cache costs on this machine: decode step time, memory, batch invariance.

llama.cpp quantizes the V cache only with flash attention, and on a CPU flash attention
makes greedy output depend on what shares a batch (bench/flash_attention.py). So each
`cache_quant` comes two ways: K and V quantized (flash attention on, as gallama turns it on
for them), and K alone (`cache_quant_v=FP16`, flash attention off, gallama's CPU default).
For each, on the same GGUF and threads:

- one-token decode step at several context lengths (a llama.cpp context with per-sequence
  KV streams, as gallama's engine makes it);
- the KV cache's bytes per token of context;
- batch invariance: greedy output of 4 chat requests alone, then together, in gallama's engine,
  under and past 512 cells of context.

    python bench/cache_quant.py [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.flash_attention import CONTEXTS, STORY, batch_invariant, step_times  # noqa: E402
from gallama.engines.llama_cpp.setup import flash_attention_for, load_model, model_size  # noqa: E402

# Past 512 cells of context, where llama.cpp's CPU flash attention splits a lone row's KV across threads.
LONG_TASKS = [f"Summarize this story: {STORY * 6}", f"List the objects in this story: {STORY * 6}",
              "Write a story about a dragon.", "Explain photosynthesis."]
# (label, cache_quant, cache_quant_v, flash attention); None: gallama's default for that cache.
SETTINGS = (
    ("FP16 (default)", None, None, None),
    ("FP16, flash attention on", None, None, True),
    ("Q8: K and V", "Q8", None, None),
    ("Q8: K alone (cache_quant_v=FP16)", "Q8", "FP16", None),
    ("Q4: K and V", "Q4", None, None),
    ("Q4: K alone (cache_quant_v=FP16)", "Q4", "FP16", None),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file; default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model_path = args.model or common.default_model_path()
    model = load_model(model_path)

    header = " | ".join(f"step at {n}" for n in CONTEXTS)
    lines = [f"| cache | flash attention | KV bytes per token | {header} | alone = batched | past 512 cells |",
             "|---|---|---|" + "---|" * len(CONTEXTS) + "---|---|"]
    baseline = None
    for label, quant, quant_v, flash in SETTINGS:
        steps = step_times(model, flash, args.threads, args.rounds, quant, quant_v)["step"]
        same = asyncio.run(batch_invariant(model_path, flash, args.threads, quant, quant_v))
        same_long = asyncio.run(batch_invariant(model_path, flash, args.threads, quant, quant_v, LONG_TASKS))
        kv = model_size(model_path, 1, quant, quant_v).kv_bytes
        times = [steps[n, 1] for n in CONTEXTS]
        baseline = baseline or times
        cells = " | ".join(f"{t * 1000:.1f} ms ({t / b:.2f})" for t, b in zip(times, baseline))
        attention = "on" if flash_attention_for(flash, quant_v or quant, on_gpu=False) else "off"
        lines.append(f"| {label} | {attention} | {kv / 1024:.1f} KiB | {cells} | {same} | {same_long} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    command = ("python bench/cache_quant.py " + " ".join(sys.argv[1:])).strip()
    common.write_section("KV cache quantization (bench/cache_quant.py)", f"""
Run {common.today()} on {common.machine_description()}; {common.versions("llama-cpp-python")}.
Command: `{command}`. Model: `{Path(model_path).name}`, {args.threads} threads. Step times: medians
of {args.rounds * 4} one-token decodes at that many tokens of context (in brackets: against the
default FP16 cache); alone = batched: 4 chat requests (2 with ~330-token prompts), 120 greedy
tokens each, the same tokens run one at a time and together in gallama's engine; past 512 cells:
the same with the 2 long prompts at ~960 tokens.

{table}
""")


if __name__ == "__main__":
    main()
