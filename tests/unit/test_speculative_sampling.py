import numpy as np

from gallama.engines.base import SamplingParams
from gallama.engines.ngram import NgramDrafter
from gallama.engines.sampling import SequenceSampler


def test_ngram_proposes_the_earlier_continuation():
    drafter = NgramDrafter([1, 2, 3, 4, 5, 9, 1, 2, 3])
    assert drafter.propose(2) == [4, 5]
    drafter.append(4)
    assert drafter.propose(3) == [5, 9, 1]
    assert NgramDrafter([1, 2, 3]).propose(4) == []
    assert drafter.propose(0) == []


def test_greedy_verification_keeps_only_the_argmax():
    sampler = SequenceSampler(SamplingParams(temperature=0), 3)
    logits = np.array([0.0, 2.0, 1.0], dtype=np.float32)
    assert sampler.verify_draft(logits, 1) == (1, True)
    assert sampler.verify_draft(logits, 2) == (1, False)


def test_rejection_sampling_keeps_the_model_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    sampler = SequenceSampler(SamplingParams(temperature=1.0, seed=3), 3)
    draws = [sampler.verify_draft(logits, 2)[0] for _ in range(6000)]
    frequencies = np.bincount(draws, minlength=3) / len(draws)
    assert np.allclose(frequencies, [0.5, 0.3, 0.2], atol=0.02)
    kept = [sampler.verify_draft(logits, 0)[1] for _ in range(4000)]
    assert abs(np.mean(kept) - 0.5) < 0.03  # a draft stands with its probability


def test_verification_draws_what_sampling_without_drafts_draws():
    # One draw per position either way: a seeded request's tokens do not depend on its drafts.
    logits = np.log(np.array([0.4, 0.35, 0.25], dtype=np.float32))
    plain = SequenceSampler(SamplingParams(temperature=0.8, seed=11), 3)
    drafting = SequenceSampler(SamplingParams(temperature=0.8, seed=11), 3)
    chosen = [plain.choose(logits) for _ in range(200)]
    verified = [drafting.verify_draft(logits, i % 3)[0] if i % 2 else drafting.choose(logits) for i in range(200)]
    assert verified == chosen
