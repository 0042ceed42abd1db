"""Token sampling over one row of logits, in numpy.

Kept apart from the decode loop so that it is pure and unit-testable, and so
that every backend samples the same way.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from gallama.engines.base import SamplingParams


NEGLIGIBLE_LOG_RATIO = 30.0


class SequenceSampler:
    """Samples the tokens of one sequence; holds its RNG and penalty counts."""

    def __init__(self, params: SamplingParams, vocab_size: int):
        self.params = params
        self.vocab_size = vocab_size
        # numpy takes non-negative seeds only; modulo 2**64 maps every 64-bit seed to its own.
        self.rng = np.random.default_rng(None if params.seed is None else params.seed % 2**64)
        self.generated_counts: Counter[int] = Counter()
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64)
        self._bias_values = np.fromiter(params.logit_bias.values(), dtype=np.float32)
        self._penalized = bool(params.presence_penalty or params.frequency_penalty or params.repetition_penalty != 1.0)

    def adjusted_logits(self, logits: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        """Logits after logit_bias, penalties and the constraint mask (a copy if changed)."""
        p = self.params
        penalize = self._penalized and bool(self.generated_counts)  # not with logit_bias alone
        if self._bias_ids.size or penalize:
            logits = logits.copy()
            if self._bias_ids.size:
                logits[self._bias_ids] += self._bias_values
            if penalize:
                ids = np.fromiter(self.generated_counts.keys(), dtype=np.int64)
                counts = np.fromiter(self.generated_counts.values(), dtype=np.float32)
                if p.repetition_penalty != 1.0:
                    # As in llama.cpp and transformers: shrink positive logits, grow negative ones.
                    seen = logits[ids]
                    logits[ids] = np.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
                logits[ids] -= counts * p.frequency_penalty + p.presence_penalty
        if allowed is not None:
            logits = np.where(allowed, logits, -np.inf).astype(np.float32, copy=False)
        return logits

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens sampling may pick and their probabilities, after temperature, top-k, top-p, min-p.

        Without a full sort: at temperature 1 nearly the whole vocabulary is a candidate, and
        sorting SmolLM2's 49k tokens took 4 ms a token here. Only top-p needs an order.
        """
        p = self.params
        scaled = logits.astype(np.float64) / p.temperature
        best = scaled.max()
        if not np.isfinite(best):
            return np.array([int(np.argmax(logits))]), np.ones(1)
        # Tokens more than e^30 times less likely than the best carry no probability worth sampling.
        candidates = np.flatnonzero(scaled >= best - NEGLIGIBLE_LOG_RATIO)
        if p.top_k and p.top_k < candidates.size:
            candidates = candidates[np.argpartition(scaled[candidates], -p.top_k)[-p.top_k :]]
        weights = np.exp(scaled[candidates] - best)  # the best token weighs 1
        if p.top_p < 1.0:
            candidates, weights = _nucleus(candidates, weights, p.top_p)
        if p.min_p > 0.0:
            keep = weights >= p.min_p  # relative to the best, which always stays
            candidates, weights = candidates[keep], weights[keep]
        return candidates, weights / weights.sum()

    def choose(self, logits: np.ndarray) -> int:
        """Picks a token from adjusted logits."""
        if self.params.temperature <= 0.0:
            return int(np.argmax(logits))
        candidates, probs = self.distribution(logits)
        # One uniform draw through the CDF, as Generator.choice does, without its checks of p (a third of the time).
        cdf = np.cumsum(probs)
        return int(candidates[min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")), cdf.size - 1)])

    def verify_draft(self, logits: np.ndarray, draft: int) -> tuple[int, bool]:
        """Samples this position as `choose` does; the draft stands if it is the token drawn.

        Both drafters propose one token for sure, so the speculative-sampling rule
        (keep the draft with probability p(draft), else draw from p without it) is
        the same as drawing from p and comparing: the output distribution is the
        model's, and with one draw per position as without drafts, a seeded request
        samples the same tokens whether or how much it drafts.
        """
        token = self.choose(logits)
        return token, token == draft

    def accept(self, token: int) -> None:
        self.generated_counts[token] += 1


def _nucleus(candidates: np.ndarray, weights: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The fewest best tokens whose share of the weight reaches top_p, best first.

    Sorts the best 64 first, then 8 times more while they fall short: the mass sits in few tokens.
    """
    target = top_p * weights.sum()
    size = 64
    while True:
        if size >= weights.size:
            top = np.argsort(-weights, kind="stable")
        else:
            top = np.argpartition(-weights, size - 1)[:size]
            top = top[np.argsort(-weights[top], kind="stable")]
        mass = np.cumsum(weights[top])
        if mass[-1] >= target or top.size == weights.size:
            keep = min(int(np.searchsorted(mass, target)) + 1, top.size)
            return candidates[top[:keep]], weights[top[:keep]]
        size *= 8


def log_softmax(logits: np.ndarray) -> np.ndarray:
    values = logits.astype(np.float64)
    finite_max = np.max(values[np.isfinite(values)])
    shifted = values - finite_max
    return shifted - np.log(np.sum(np.exp(shifted)))


def top_logprobs(logprobs: np.ndarray, count: int) -> list[tuple[int, float]]:
    if count <= 0:
        return []
    top = np.argpartition(logprobs, -count)[-count:]
    top = top[np.argsort(-logprobs[top], kind="stable")]
    return [(int(t), float(logprobs[t])) for t in top]
