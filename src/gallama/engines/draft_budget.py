"""How many tokens each sequence drafts in a step: as many as the step's time is worth.

A drafted token becomes a batch row to verify. On a GPU a row is nearly free; on a
CPU llama.cpp's kernels grow with the rows (measured on the bundled model at ~450
tokens of context: 12 ms for one row, 34 ms for six; with flash attention on, 16 and
60), so a draft the model then rejects costs a third to half a step. Drafting pays
where the tokens a row is expected to add, per second of decode it adds, beat what
the step already yields.

`StepCost` keeps the decode time of recent steps by their rows; each sequence's
`AcceptanceRate` says how often its drafts were kept lately; `draft_lengths` picks
the rows that raise the step's expected tokens per second. Timing only decides how
many drafts are verified, never which tokens come out (see `SequenceSampler.verify_draft`).
"""

from __future__ import annotations


class StepCost:
    """Recent decode seconds of a step, by its number of rows.

    Measured per row count rather than fitted to a line: with flash attention on, a
    CPU's first extra rows cost most (measured: 17, 30, 47 and 67 ms for 1, 2, 3 and
    6 rows), and a line through the counts in use would make the cheap larger ones
    look dear.
    A count not measured lately is assumed to cost what the next smaller measured
    one does, so it gets tried, and measured; a measurement not renewed for
    `forget_after` steps is dropped, so a slow moment is not held against a count forever.
    """

    def __init__(self, decay: float = 0.7, forget_after: int = 200):
        self.decay, self.forget_after = decay, forget_after
        self._seconds: dict[int, tuple[float, int]] = {}  # rows -> (smoothed seconds, step last seen)
        self._steps = 0

    def observe(self, rows: int, seconds: float) -> None:
        self._steps += 1
        if rows in self._seconds:
            seconds = self.decay * self._seconds[rows][0] + (1.0 - self.decay) * seconds
        self._seconds[rows] = (seconds, self._steps)
        if self._steps % self.forget_after == 0:
            self._seconds = {r: v for r, v in self._seconds.items() if self._steps - v[1] < self.forget_after}

    def estimate(self, rows: int) -> float | None:
        """Seconds for a step of `rows` rows; None when no step of this size or smaller was measured."""
        known = [r for r in self._seconds if r <= rows]
        return self._seconds[max(known)][0] if known else None


class AcceptanceRate:
    """The recent share of a sequence's verified drafts that the model kept.

    Evidence fades every step, drafted or not, so a sequence that stopped
    drafting drifts back to the prior and tries again.
    """

    def __init__(self, prior: float, prior_weight: float = 2.0, decay: float = 0.9):
        self.prior, self.prior_weight, self.decay = prior, prior_weight, decay
        self._kept = self._verified = 0.0

    def step(self, verified: int, kept: int) -> None:
        self._kept = self.decay * self._kept + kept
        self._verified = self.decay * self._verified + verified

    @property
    def value(self) -> float:
        return (self._kept + self.prior * self.prior_weight) / (self._verified + self.prior_weight)


def draft_lengths(acceptance: list[float], rooms: list[int], cost: StepCost) -> list[int]:
    """Drafts per sequence that maximise the step's expected tokens per second.

    The i-th draft of a sequence with acceptance p adds p**i expected tokens (it
    counts only if the ones before it were kept). Drafts are taken by decreasing
    gain, and the step keeps the number of them whose tokens per second is best.
    """
    candidates = sorted(
        ((p**i, s) for s, (p, room) in enumerate(zip(acceptance, rooms)) for i in range(1, room + 1)), reverse=True,
    )
    best_count, best_rate, tokens = 0, 0.0, float(len(rooms))
    for count in range(len(candidates) + 1):
        if count:
            tokens += candidates[count - 1][0]
        seconds = cost.estimate(len(rooms) + count)
        if seconds is None:  # nothing measured yet: draft all
            best_count = len(candidates)
            break
        rate = tokens / seconds if seconds > 0 else float("inf")
        if rate > best_rate:
            best_count, best_rate = count, rate
    lengths = [0] * len(rooms)
    for _, s in candidates[:best_count]:
        lengths[s] += 1
    return lengths
