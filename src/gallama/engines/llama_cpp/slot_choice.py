"""Which KV slot a new sequence runs in.

With per-sequence KV streams, llama.cpp only puts sequences with consecutive ids
into one micro-batch (`split_equal(sequential=true)`): every gap in the running
ids costs one more pass over the weights per decode step (8 streams spread over
every other id decoded at half the speed of 8 neighbours). So a new sequence
goes next to the running ones, and a long cached prefix held by a slot elsewhere
is copied over (that sequence's cells) rather than given up.

A slot's cache is only overwritten by the prompt that continues it (or retries
it), or when no slot is free of other conversations (least recently used first):
a shared system prompt does not pull every request into its slot, where each
would overwrite the last one's conversation; it is copied to the slot taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from gallama.engines.prefix import common_prefix_length, starts_with

# A copy (setup.copy_sequence) on the CPU moves the source sequence's own cells: measured with
# SmolLM2-135M on 2 CPU cores, 0.9 ms for 43 cached tokens and 1.3 ms for 738, while prefilling
# costs ~2.8 ms a token; 8 keeps chat-template headers (a few tokens every prompt shares) uncopied.
MIN_COPIED_PREFIX = 8


class Slot(Protocol):
    seq_id: int
    cached: list[int]


@dataclass
class SlotChoice:
    slot: Slot
    reused: int  # prompt tokens the sequence finds in its KV cache
    copy_from: Slot | None = None  # a slot whose first `reused` cached tokens are copied into `slot` first


# Prompt tokens always decoded, even when cached: the last one needs logits, and it gets them from
# a batch of two or more rows of its sequence, as in a full prefill. llama.cpp multiplies one row
# with another kernel than several (on x86 llamafile's sgemm serves two or more), so a prompt's
# first token would otherwise come out differently cached and not.
DECODED_PROMPT_TAIL = 2


def reusable_prefix(cached: list[int], prompt: list[int]) -> int:
    """How many of a prompt's tokens a cache holding `cached` spares it from decoding."""
    return max(0, min(common_prefix_length(cached, prompt), len(prompt) - DECODED_PROMPT_TAIL))


def _added_runs(slot: Slot, running: set[int]) -> int:
    """How many more runs of consecutive ids the running set has with this slot: -1, 0 or 1."""
    return 1 - (slot.seq_id - 1 in running) - (slot.seq_id + 1 in running)


def _loses_nothing(slot: Slot, reusable: int, prompt: list[int]) -> bool:
    """Whether the prompt may take this slot without costing another conversation its cache: the
    slot is empty, the prompt continues all of it (the next turn), or it holds the whole prompt (a
    retry, whose new answer replaces the old)."""
    return starts_with(prompt, slot.cached) or reusable == len(prompt) - DECODED_PROMPT_TAIL


def choose_slot(free: Sequence[Slot], running: set[int], prompt: list[int], contiguous: bool) -> SlotChoice:
    """`free` is least recently used first, which wins ties; `contiguous`: keep running ids consecutive."""
    reusable = {id(slot): reusable_prefix(slot.cached, prompt) for slot in free}
    best = max(free, key=lambda s: reusable[id(s)])
    candidates = list(free)
    if contiguous and running:
        fewest = min(_added_runs(s, running) for s in free)
        candidates = [s for s in free if _added_runs(s, running) == fewest]
    harmless = [s for s in candidates if _loses_nothing(s, reusable[id(s)], prompt)]
    target = max(harmless, key=lambda s: reusable[id(s)]) if harmless else candidates[0]
    if target is not best and reusable[id(best)] - reusable[id(target)] >= MIN_COPIED_PREFIX:
        return SlotChoice(target, reusable[id(best)], copy_from=best)
    return SlotChoice(target, reusable[id(target)])
