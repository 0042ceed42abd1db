import numpy as np
import pytest

from gallama.engines.base import SamplingParams
from gallama.engines.sampling import SequenceSampler, log_softmax, top_logprobs


def logits_of(values):
    return np.array(values, dtype=np.float32)


def test_greedy_picks_argmax():
    sampler = SequenceSampler(SamplingParams(temperature=0), 4)
    assert sampler.choose(logits_of([0.1, 3.0, 2.0, -1.0])) == 1


def test_mask_excludes_tokens():
    sampler = SequenceSampler(SamplingParams(temperature=0), 4)
    allowed = np.array([True, False, True, False])
    assert sampler.choose(sampler.adjusted_logits(logits_of([0.1, 3.0, 2.0, -1.0]), allowed)) == 2


def test_logit_bias_moves_choice():
    sampler = SequenceSampler(SamplingParams(temperature=0, logit_bias={3: 10.0}), 4)
    assert sampler.choose(sampler.adjusted_logits(logits_of([0.1, 3.0, 2.0, -1.0]), None)) == 3


def test_same_seed_same_draws_and_distribution():
    logits = logits_of([1.0, 1.2, 0.8, 1.1])
    draws_a = [SequenceSampler(SamplingParams(seed=5), 4).choose(logits) for _ in range(3)]
    first = SequenceSampler(SamplingParams(seed=5), 4)
    second = SequenceSampler(SamplingParams(seed=5), 4)
    assert [first.choose(logits) for _ in range(50)] == [second.choose(logits) for _ in range(50)]
    sampler = SequenceSampler(SamplingParams(seed=1), 4)
    counts = np.bincount([sampler.choose(logits) for _ in range(4000)], minlength=4) / 4000
    expected = np.exp(logits) / np.exp(logits).sum()
    assert np.allclose(counts, expected, atol=0.03)
    assert len(set(draws_a)) == 1


def test_negative_and_64_bit_seeds_are_reproducible_and_distinct():
    logits = logits_of(np.zeros(64))

    def draws(seed):
        sampler = SequenceSampler(SamplingParams(seed=seed), 64)
        return [sampler.choose(logits) for _ in range(8)]

    assert draws(-5) == draws(-5)
    assert draws(-5) != draws(5)
    assert draws(2**63 - 1 + 3) == draws(2**63 - 1 + 3)  # n choices add their index to the request's seed


def test_top_k_one_is_greedy():
    sampler = SequenceSampler(SamplingParams(temperature=1.5, top_k=1, seed=0), 5)
    assert all(sampler.choose(logits_of([0, 1, 5, 2, 3])) == 2 for _ in range(20))


def test_top_p_keeps_the_nucleus():
    # probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p=0.7 keeps the first two only
    logits = np.log(logits_of([0.64, 0.24, 0.09, 0.03]))
    sampler = SequenceSampler(SamplingParams(top_p=0.7, seed=0), 4)
    assert {sampler.choose(logits) for _ in range(300)} == {0, 1}


def test_min_p_drops_unlikely_tokens():
    logits = np.log(logits_of([0.5, 0.3, 0.15, 0.05]))
    sampler = SequenceSampler(SamplingParams(min_p=0.5, seed=0), 4)
    assert {sampler.choose(logits) for _ in range(300)} == {0, 1}


def test_penalties_apply_to_generated_tokens():
    params = SamplingParams(temperature=0, frequency_penalty=2.0, presence_penalty=1.0)
    sampler = SequenceSampler(params, 3)
    logits = logits_of([2.0, 1.5, 0.0])
    assert sampler.choose(sampler.adjusted_logits(logits, None)) == 0
    sampler.accept(0)
    # 2.0 - (1*2.0 + 1.0) = -1.0 < 1.5
    assert sampler.choose(sampler.adjusted_logits(logits, None)) == 1


def test_repetition_penalty_divides_positive_logits():
    sampler = SequenceSampler(SamplingParams(temperature=0, repetition_penalty=2.0), 2)
    sampler.accept(0)
    adjusted = sampler.adjusted_logits(logits_of([3.0, 2.0]), None)
    assert adjusted[0] == pytest.approx(1.5)


def test_log_softmax_and_top_logprobs():
    logprobs = log_softmax(logits_of([1.0, 2.0, 3.0]))
    assert np.exp(logprobs).sum() == pytest.approx(1.0)
    top = top_logprobs(logprobs, 2)
    assert [t for t, _ in top] == [2, 1]
    assert top_logprobs(logprobs, 0) == []


def _reference_distribution(logits, temperature, top_k, top_p, min_p):
    """The textbook order: sort every candidate, then cut by top-k, top-p and min-p."""
    scaled = logits.astype(np.float64) / temperature
    order = np.argsort(-scaled, kind="stable")
    order = order[scaled[order] >= scaled.max() - 30.0]
    if top_k:
        order = order[:top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    keep = min(probs.size, int(np.searchsorted(np.cumsum(probs), top_p)) + 1)
    keep = min(keep, max(1, int(np.count_nonzero(probs >= min_p * probs[0]))))
    return dict(zip(order[:keep].tolist(), (probs[:keep] / probs[:keep].sum()).tolist()))


@pytest.mark.parametrize("top_k,top_p,min_p", [(0, 1.0, 0.0), (0, 0.9, 0.0), (40, 0.95, 0.05), (0, 0.999, 0.0),
                                               (0, 0.5, 0.1), (7, 1.0, 0.2)])
def test_distribution_without_a_full_sort_matches_the_sorted_one(top_k, top_p, min_p):
    rng = np.random.default_rng(3)
    for temperature in (0.3, 1.0, 1.7):
        logits = (rng.standard_normal(49152) * 4).astype(np.float32)  # a vocabulary-sized row, most tokens candidates
        sampler = SequenceSampler(SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p), 49152)
        tokens, probs = sampler.distribution(logits)
        found = dict(zip(tokens.tolist(), probs.tolist()))
        expected = _reference_distribution(logits, temperature, top_k, top_p, min_p)
        assert found.keys() == expected.keys()
        assert np.allclose([found[t] for t in expected], list(expected.values()), rtol=1e-9)
