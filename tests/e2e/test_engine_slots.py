"""KV slots in the real engine: a cached prefix copied next to the running sequences is exact.

With per-sequence KV streams llama.cpp batches only consecutive sequence ids together, so
the engine runs a new sequence next to the running ones and copies a long cached prefix
from a slot elsewhere (engines/slot_choice.py). The copy must change nothing in the output.
"""

from __future__ import annotations

import asyncio

import pytest

from gallama.bundled_models import DEFAULT_CHAT_MODEL, locate
from gallama.engines.base import GenerationRequest, SamplingParams
from gallama.engines.llama_cpp_engine import LlamaCppEngine
from gallama.engines.slot_choice import MIN_COPIED_PREFIX

PATH = str(locate(DEFAULT_CHAT_MODEL))
SHARED = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a can of oil and a "
    "small notebook in which he wrote down the ships he saw, the weather, and the colour of the sea. "
    "One stormy night in November a bottle washed up on the rocks below the tower. It was green, sealed with "
    "red wax, and so covered in barnacles that it must have drifted for years before the waves brought it to "
    "him. He carried it up to the lamp room, set it on the table next to his notebook, and looked at it for a "
    "long time while the rain hammered against the windows."
)


def request(engine, text, max_tokens):
    tokens = engine.tokenize(text, add_special=True)
    return GenerationRequest(prompt_tokens=tokens, max_tokens=max_tokens, sampling=SamplingParams(temperature=0.0))


async def collect(stream):
    return [event async for event in stream]


@pytest.mark.parametrize("draft", [None, PATH], ids=["plain", "draft-model"])
async def test_copied_prefix_gives_the_same_output_as_reuse_in_place(draft):
    first, follow_up = SHARED, SHARED + " He opened it and read the letter inside:"
    in_place = LlamaCppEngine(PATH, max_sequences=4, cache_size=4 * 1024, draft_model_path=draft)
    try:
        await collect(in_place.generate(request(in_place, first, 4)))
        expected = await collect(in_place.generate(request(in_place, follow_up, 24)))
    finally:
        in_place.close()

    engine = LlamaCppEngine(PATH, max_sequences=4, cache_size=4 * 1024, draft_model_path=draft)
    try:
        await collect(engine.generate(request(engine, first, 4)))  # slot 0 holds the shared prefix
        # Two unrelated streams take slots 1 and 2; the one in slot 1 is then cancelled, leaving
        # slot 2 running: slot 0 is not next to it, so the follow-up must run in 1 or 3.
        busy, neighbour = (engine.generate(request(engine, f"Count to a hundred in {language}:", 300))
                           for language in ("French", "German"))
        await anext(busy)
        await anext(neighbour)
        busy.cancel()
        stream = engine.generate(request(engine, follow_up, 24))
        got = await collect(stream)
        neighbour.cancel()
        shared_tokens = len(engine.tokenize(first, add_special=True))
    finally:
        engine.close()

    assert stream._sequence.slot.seq_id in (1, 3)  # ran next to slot 2, not in slot 0
    assert shared_tokens > MIN_COPIED_PREFIX
    assert expected[0].cached_prompt_tokens == got[0].cached_prompt_tokens >= shared_tokens - 1
    assert [e.token for e in got] == [e.token for e in expected]
