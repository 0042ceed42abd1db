"""A Hugging Face model folder (config.json, safetensors, tokenizer files) through the transformers
engine, on the CPU and, where torch sees CUDA, on a GPU with `gpus=`.

No weights can be downloaded here, so the folder holds a small Llama with random weights and the
bundled SmolLM2's tokenizer: what is tested is loading, placement and batching, not answers.
"""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from gallama.bundled_models import DEFAULT_CHAT_MODEL, locate
from gallama.engines.base import GenerationRequest, SamplingParams

MISSING = [name for name in ("torch", "transformers", "gguf", "accelerate") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"the transformers extra is not installed (missing: {', '.join(MISSING)})")


def cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("random-llama")
    gguf = locate(DEFAULT_CHAT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


async def answer(engine, prompt: list[int], max_tokens: int = 8) -> list[int]:
    request = GenerationRequest(prompt_tokens=prompt, max_tokens=max_tokens,
                                sampling=SamplingParams(temperature=0.0, logit_bias={engine.special_tokens.eos: -1e9}))
    return [event.token async for event in engine.generate(request)]


async def run_alone_and_batched(engine) -> tuple[list[list[int]], list[list[int]]]:
    prompts = [engine.tokenize(text) for text in ("Hello there", "A longer prompt than the first one", "x")]
    alone = [await answer(engine, prompt) for prompt in prompts]
    return alone, list(await asyncio.gather(*(answer(engine, prompt) for prompt in prompts)))


async def test_a_model_folder_serves_on_the_cpu_with_the_same_greedy_tokens_alone_and_batched(folder):
    from gallama.engines.transformers.engine import TransformersEngine

    engine = TransformersEngine(str(folder), max_sequences=4)
    try:
        assert engine.facts().placement == "CPU" and engine.facts().kv_description.startswith("float32")
        alone, batched = await run_alone_and_batched(engine)
    finally:
        engine.close()
    assert [len(tokens) for tokens in alone] == [8, 8, 8]
    assert batched == alone


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or not cuda_count(),
                    reason="needs a CUDA GPU that torch sees (this machine has none)")
async def test_gpus_place_the_model_on_the_gpu_in_bf16(folder):
    from gallama.engines.transformers.engine import TransformersEngine

    engine = TransformersEngine(str(folder), max_sequences=4, gpus=[1])
    try:
        assert "cuda" in engine.facts().placement and engine.facts().kv_description.startswith("bfloat16")
        alone, batched = await run_alone_and_batched(engine)
    finally:
        engine.close()
    # bf16 kernels may pick other reductions for one row than for several: lengths, not equality.
    assert [len(tokens) for tokens in alone] == [len(tokens) for tokens in batched] == [8, 8, 8]
