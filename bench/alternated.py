"""Two decode rates measured in alternated rounds, for the engine-level GPU checks (no dependencies, so
that it runs on a lent machine beside only the engine's own)."""

from __future__ import annotations

import statistics
from typing import Awaitable, Callable


async def alternated(rounds: int, ours: Callable[[], Awaitable[float]], theirs: Callable[[], float]
                     ) -> tuple[list[float], list[float]]:
    """`rounds` rates of each, the order swapped every round; a first round warms both up and is dropped."""
    our_rates, their_rates = [], []
    for n in range(rounds + 1):
        for side in (("ours", "theirs") if n % 2 else ("theirs", "ours")):
            rate = await ours() if side == "ours" else theirs()
            if n:
                (our_rates if side == "ours" else their_rates).append(rate)
    return our_rates, their_rates


def comparison(label: str, ours: list[float], theirs: list[float]) -> str:
    """A report line: both medians, their ratio, and every round's rates."""
    mine, other = statistics.median(ours), statistics.median(theirs)
    return (f"- 1 stream: {mine:.0f} tokens/s, {label} {other:.0f} (ratio {mine / other:.3f}; per round "
            f"{', '.join(f'{r:.0f}' for r in ours)} vs {', '.join(f'{r:.0f}' for r in theirs)})")
