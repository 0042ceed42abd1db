"""KV slots in the real engine: a cached prefix copied next to the running sequences is exact.

With per-sequence KV streams llama.cpp batches only consecutive sequence ids together, so
the engine runs a new sequence next to the running ones and copies a long cached prefix
from a slot elsewhere (engines/llama_cpp/slot_choice.py). The copy must change nothing in the output.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from gallama.agentic.constraints import ConstraintCompiler, json_schema_grammar
from gallama.bundled_models import DEFAULT_CHAT_MODEL, locate
from gallama.engines.base import EngineError, GenerationRequest, SamplingParams
from gallama.engines.llama_cpp.engine import LlamaCppEngine
from gallama.engines.llama_cpp.slot_choice import MIN_COPIED_PREFIX

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


def greedy_with_logprobs(engine, tokens, max_tokens=12):
    """A greedy stream whose events carry each token's logprob, to compare answers to the bit."""
    return engine.generate(GenerationRequest(list(tokens), max_tokens, SamplingParams(temperature=0.0), top_logprobs=0))


def to_the_bit(events):
    return [(e.token, e.logprob) for e in events]


@pytest.mark.parametrize("by_stream", [False, True], ids=["saved-state-copy", "stream-copy"])
@pytest.mark.parametrize("draft", [None, PATH], ids=["plain", "draft-model"])
async def test_copied_prefix_gives_the_same_output_as_reuse_in_place(draft, by_stream):
    """Both ways of copying (setup.copy_sequence): a saved state's cells on the CPU, the whole stream on a GPU."""
    first, follow_up = SHARED, SHARED + " He opened it and read the letter inside:"
    in_place = LlamaCppEngine(PATH, max_sequences=4, cache_size=4 * 1024, draft_model_path=draft)
    try:
        await collect(in_place.generate(request(in_place, first, 4)))
        expected = await collect(in_place.generate(request(in_place, follow_up, 24)))
    finally:
        in_place.close()

    engine = LlamaCppEngine(PATH, max_sequences=4, cache_size=4 * 1024, draft_model_path=draft)
    assert engine._copies_by_stream is False  # the CPU's way, unless the test asks for the GPU's
    engine._copies_by_stream = by_stream
    if engine._draft_model is not None:
        engine._draft_model._copies_by_stream = by_stream
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



async def test_a_conversation_that_lost_its_slot_is_restored_from_memory():
    first, follow_up = SHARED, SHARED + " He opened it and read the letter inside:"
    in_place = LlamaCppEngine(PATH, max_sequences=1, cache_size=2048)
    try:
        await collect(in_place.generate(request(in_place, first, 4)))
        expected = await collect(in_place.generate(request(in_place, follow_up, 24)))
    finally:
        in_place.close()

    async def follow_up_after_others(engine):
        await collect(engine.generate(request(engine, first, 4)))
        for other in ("Name three rivers.", "Write a haiku about rain."):  # each takes the only slot
            await collect(engine.generate(request(engine, other, 4)))
        return await collect(engine.generate(request(engine, follow_up, 24)))

    engine = LlamaCppEngine(PATH, max_sequences=1, cache_size=2048)
    forgetful = LlamaCppEngine(PATH, max_sequences=1, cache_size=2048, prompt_cache_mb=0)
    try:
        shared_tokens = len(engine.tokenize(first, add_special=True))
        got = await follow_up_after_others(engine)
        recomputed = await follow_up_after_others(forgetful)
    finally:
        engine.close()
        forgetful.close()

    assert got[0].cached_prompt_tokens == expected[0].cached_prompt_tokens >= shared_tokens - 1
    assert [e.token for e in got] == [e.token for e in expected]  # the very cells that were computed
    assert recomputed[0].cached_prompt_tokens < MIN_COPIED_PREFIX


async def test_greedy_output_is_the_same_alone_and_beside_other_requests():
    # llama.cpp's CPU flash-attention kernel computes a lone sequence's attention another way than a
    # batch of several (its KV split across threads past 512 cells): with it on, the outputs
    # below changed when run together. The engine's CPU default (off) computes each KV stream alike.
    chat = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    tasks = [f"Summarize this story: {SHARED * 2}", "Write a story about a dragon.",
             f"List the objects in this story: {SHARED * 2}", "Explain photosynthesis."]
    engine = LlamaCppEngine(PATH, max_sequences=4, cache_size=4 * 2048)
    try:
        def greedy(task):
            tokens = engine.tokenize(chat.format(task), add_special=False)
            return collect(engine.generate(GenerationRequest(tokens, 120, SamplingParams(temperature=0.0))))

        alone = [await greedy(task) for task in tasks]
        together = await asyncio.gather(*(greedy(task) for task in tasks))
        assert [[e.token for e in events] for events in together] == [[e.token for e in events] for events in alone]
    finally:
        engine.close()


async def test_a_prompt_gives_the_same_output_fresh_and_from_the_cache():
    # llama.cpp computes a one-row chunk of a sequence with other kernels than several rows (on the
    # 25-token prompt below the first token's logprob differs). The engine never feeds a prompt's
    # last token alone: a cached prompt decodes its last two tokens again, and chunking (24-token
    # batches here would leave one token over) keeps two or more tokens for the last chunk. The very
    # prompt a slot last prefilled decodes nothing: its first token comes from the logits kept then.
    engine = LlamaCppEngine(PATH, max_sequences=1, cache_size=2048, n_batch=24)
    try:
        prompt = engine.tokenize("<|im_start|>system\nYou answer briefly.<|im_end|>\n<|im_start|>user\n"
                                 "Write one sentence about the sea.<|im_end|>\n<|im_start|>assistant\n")
        assert len(prompt) == 25

        def greedy(tokens):
            return collect(greedy_with_logprobs(engine, tokens, 20))

        fresh = await greedy(prompt)
        await greedy(prompt + engine.tokenize("The sea is"))  # the slot now holds a longer prompt's logits
        tail_decoded = await greedy(prompt)
        from_kept_logits = await greedy(prompt)
        assert fresh[0].cached_prompt_tokens == 0
        assert tail_decoded[0].cached_prompt_tokens == len(prompt) - 2
        assert from_kept_logits[0].cached_prompt_tokens == len(prompt)
        assert to_the_bit(tail_decoded) == to_the_bit(fresh)
        assert to_the_bit(from_kept_logits) == to_the_bit(fresh)
    finally:
        engine.close()


async def test_a_prompt_sent_again_applies_its_own_bias_and_constraint_to_the_kept_logits():
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    engine = LlamaCppEngine(PATH, max_sequences=2, cache_size=2 * 2048)
    try:
        prompt = engine.tokenize("<|im_start|>user\nGive me a person as JSON.<|im_end|>\n<|im_start|>assistant\n")
        compiler = ConstraintCompiler(engine.constraint_tokenizer)

        def generate(max_tokens, constrained=False, **sampling):
            constraint = compiler.matcher(json_schema_grammar(schema)) if constrained else None
            request = GenerationRequest(list(prompt), max_tokens, SamplingParams(temperature=0.0, **sampling),
                                        constraint=constraint)
            return collect(engine.generate(request))

        fresh = await generate(60, constrained=True)
        again = await generate(60, constrained=True)
        assert (fresh[0].cached_prompt_tokens, again[0].cached_prompt_tokens) == (0, len(prompt))
        assert [e.token for e in again] == [e.token for e in fresh]
        assert set(json.loads(b"".join(e.piece for e in again))) == {"name", "age"}
        [free] = await generate(1)
        [banned] = await generate(1, logit_bias={free.token: -100.0})
        assert banned.cached_prompt_tokens == len(prompt) and banned.token != free.token
    finally:
        engine.close()


async def test_kept_logits_belong_to_the_prompt_not_to_the_drafts_decoded_with_it():
    """A one-token prompt is decoded with drafted tokens after it: the logits kept are the prompt's, and a
    later prompt that is the prompt plus those tokens must not take them for its own."""
    engine = LlamaCppEngine(PATH, max_sequences=1, cache_size=2048, draft_model_path=PATH)
    try:
        start = engine.tokenize("Once")
        assert len(start) == 1
        first = await collect(engine.generate(GenerationRequest(start, 8, SamplingParams(temperature=0.0))))
        assert first[-1].drafted > 0  # the prompt's own step carried drafts
        longer = start + [e.token for e in first[:5]]
        again = await collect(engine.generate(GenerationRequest(longer, 4, SamplingParams(temperature=0.0))))
        assert again[0].cached_prompt_tokens == len(longer) - 2  # decoded its tail: no logits were kept for it
    finally:
        engine.close()


async def test_a_prompt_sent_again_after_losing_its_slot_comes_back_with_its_logits():
    """Its slot was given to another prompt, which saved the conversation to host memory with the logits
    that followed the prompt: restored, the prompt decodes nothing and answers as it did fresh."""
    engine = LlamaCppEngine(PATH, max_sequences=1, cache_size=2048)
    try:
        prompt = engine.tokenize(SHARED, add_special=True)

        def greedy(tokens, max_tokens=12):
            return collect(greedy_with_logprobs(engine, tokens, max_tokens))

        fresh = await greedy(prompt)
        await greedy(engine.tokenize("Write a haiku about rain.", add_special=True), 4)  # takes the only slot
        again = await greedy(prompt)
        assert again[0].cached_prompt_tokens == len(prompt)  # restored whole, its first token from the kept logits
        assert to_the_bit(again) == to_the_bit(fresh)
    finally:
        engine.close()


@pytest.mark.parametrize("by_stream", [False, True], ids=["saved-state-copy", "stream-copy"])
async def test_a_prompt_sent_again_in_another_slot_copies_its_logits_with_its_cells(by_stream):
    """A GPU's stream copy moves the cells only at the next decode: there the prompt decodes its tail, so that
    a decode always follows the copy (else a restore into the source before any decode would be copied)."""
    engine = LlamaCppEngine(PATH, max_sequences=4, cache_size=4 * 1024)
    engine._copies_by_stream = by_stream
    try:
        prompt = engine.tokenize(SHARED, add_special=True)

        def greedy(tokens, max_tokens=12):
            return greedy_with_logprobs(engine, tokens, max_tokens)

        fresh = await collect(greedy(prompt))  # slot 0 holds the prompt and the logits that followed it
        # As in the copied-prefix test: slot 2 runs, so the prompt again must run in slot 1 or 3.
        busy, neighbour = (greedy(engine.tokenize(f"Count to a hundred in {language}:", add_special=True), 300)
                           for language in ("French", "German"))
        await anext(busy)
        await anext(neighbour)
        busy.cancel()
        stream = greedy(prompt)
        again = await collect(stream)
        neighbour.cancel()
        assert stream._sequence.slot.seq_id in (1, 3)
        assert again[0].cached_prompt_tokens == len(prompt) - (2 if by_stream else 0)
        assert to_the_bit(again) == to_the_bit(fresh)
    finally:
        engine.close()


async def test_a_stream_copy_is_not_overwritten_by_a_restore_admitted_with_it():
    """A GPU's copy across per-sequence streams moves the cells at the next decode. P is copied from slot 1
    next to the running slot 3 (into 2), and in the same admission E is to be restored into slot 1, the
    copy's source: E must wait for that decode, else the copy carries E's cells and P answers wrongly."""
    engine = LlamaCppEngine(PATH, max_sequences=4, cache_size=4 * 1024)
    engine._copies_by_stream = True  # the GPU's way, forced on the CPU (where llama.cpp defers it too)
    try:
        def tokens(text):
            return engine.tokenize(text, add_special=True)

        def greedy(prompt, max_tokens=12):
            return greedy_with_logprobs(engine, prompt, max_tokens)

        p, e = tokens(SHARED), tokens("The old mill by the river had stood empty for fifty years. One day a")
        count = tokens("Count to a hundred in French:")
        fresh_e = await collect(greedy(e))  # slot 0
        fresh_p = await collect(greedy(p))  # slot 1
        await collect(greedy(tokens("Write a haiku about rain."), 4))  # slot 2
        await collect(greedy(count, 1))  # slot 3 holds the prompt alone
        await collect(greedy(tokens("Name three rivers."), 4))  # takes slot 0: E is saved to host memory
        running = greedy(count + engine.tokenize(" un, deux,", add_special=False), 300)  # continues slot 3
        await anext(running)
        with engine._lock:  # both admitted in one pass
            p_again, e_again = greedy(p), greedy(e)
        got_p, got_e = await collect(p_again), await collect(e_again)
        running.cancel()
        assert (running._sequence.slot.seq_id, p_again._sequence.slot.seq_id, e_again._sequence.slot.seq_id) == (3, 2, 1)
        assert got_p[0].cached_prompt_tokens == len(p) - 2  # copied (the tail decoded: a stream copy needs a decode)
        assert got_e[0].cached_prompt_tokens == len(e)  # restored with its kept logits
        assert to_the_bit(got_p) == to_the_bit(fresh_p) and to_the_bit(got_e) == to_the_bit(fresh_e)
    finally:
        engine.close()


def test_a_batch_too_small_for_a_prompt_chunk_is_refused():
    with pytest.raises(ValueError, match="n_batch must be at least 2"):
        LlamaCppEngine(PATH, max_sequences=1, cache_size=1024, n_batch=1)


async def test_restoring_a_saved_conversation_that_the_slots_own_save_pushes_out():
    """One slot and a prompt cache with room for one conversation: continuing conversation A after B
    restores A's saved state, while saving B (to free the slot) pushes A's entry out of the budget.
    That once raised on the engine thread, which died, and every later request waited forever."""
    engine = LlamaCppEngine(PATH, max_sequences=1, cache_size=2048, prompt_cache_mb=3)
    try:
        first_turn = request(engine, SHARED, 4)
        await collect(engine.generate(first_turn))  # A in the slot
        await collect(engine.generate(request(engine, "Count to ten in French, then in German:", 4)))  # A saved, B in
        follow_up = request(engine, SHARED + " He opened it and read the letter inside:", 8)
        events = await asyncio.wait_for(collect(engine.generate(follow_up)), 60)
        assert events[-1].finish_reason == "length" and len(events) == 8
        assert events[0].cached_prompt_tokens >= len(first_turn.prompt_tokens) - 2  # A came back from the cache
        again = await asyncio.wait_for(collect(engine.generate(request(engine, "Say yes.", 3))), 60)
        assert len(again) == 3  # the engine thread is alive
    finally:
        engine.close()


async def test_a_conversation_that_cannot_be_saved_is_dropped_and_the_next_prompt_runs(monkeypatch):
    """Saving a conversation that loses its slot is an optimization: when it fails (here: no memory), the
    conversation is prefilled again when it returns, and the prompt that took its slot runs."""
    import gallama.engines.llama_cpp.engine as engine_module

    engine = LlamaCppEngine(PATH, max_sequences=1, cache_size=2048)
    try:
        await collect(engine.generate(request(engine, SHARED, 4)))

        def no_memory(*args):
            raise MemoryError

        monkeypatch.setattr(engine_module, "save_sequence", no_memory)
        other = await asyncio.wait_for(collect(engine.generate(request(engine, "Name three rivers.", 4))), 60)
        assert len(other) == 4 and len(engine._prompt_cache) == 0
        monkeypatch.undo()
        back = await asyncio.wait_for(collect(engine.generate(request(engine, SHARED, 4))), 60)
        assert back[0].cached_prompt_tokens < MIN_COPIED_PREFIX  # prefilled again
    finally:
        engine.close()


async def test_a_request_that_fails_to_start_ends_with_an_error_and_the_engine_goes_on(monkeypatch):
    engine = LlamaCppEngine(PATH, max_sequences=1, cache_size=2048)
    try:
        def broken(*args):
            raise RuntimeError("state restore failed")

        monkeypatch.setattr(engine, "_fill_slot", broken)
        with pytest.raises(EngineError, match="could not start the request: state restore failed"):
            await asyncio.wait_for(collect(engine.generate(request(engine, "Say yes.", 3))), 60)
        monkeypatch.undo()
        assert len(await asyncio.wait_for(collect(engine.generate(request(engine, "Say yes.", 3))), 60)) == 3
    finally:
        engine.close()
