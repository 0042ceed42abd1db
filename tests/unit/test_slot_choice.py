"""Slot choice: prefix reuse first, other conversations kept, running sequences on consecutive ids."""

from dataclasses import dataclass, field

from gallama.engines.llama_cpp.slot_choice import MIN_COPIED_PREFIX, choose_slot


@dataclass
class FakeSlot:
    seq_id: int
    cached: list[int] = field(default_factory=list)


PROMPT = list(range(1000, 1200))


def slots(*ids, cached=None):
    cached = cached or {}
    return [FakeSlot(i, list(cached.get(i, []))) for i in ids]


def test_idle_engine_takes_the_longest_prefix_then_the_least_recently_used():
    free = slots(3, 1, 2, cached={2: PROMPT[:50]})
    assert choose_slot(free, set(), PROMPT, contiguous=True).slot.seq_id == 2
    assert choose_slot(slots(3, 1, 2), set(), PROMPT, contiguous=True).slot.seq_id == 3


def test_a_new_sequence_goes_next_to_the_running_ones():
    choice = choose_slot(slots(0, 5, 2), {3, 4}, PROMPT, contiguous=True)
    assert choice.slot.seq_id in (2, 5) and choice.copy_from is None
    # A slot that closes a gap beats one that extends a run.
    assert choose_slot(slots(5, 2), {1, 3}, PROMPT, contiguous=True).slot.seq_id == 2


def test_a_long_prefix_elsewhere_is_copied_next_to_the_running_ones():
    free = slots(0, 5, cached={0: PROMPT[:150]})
    choice = choose_slot(free, {3, 4}, PROMPT, contiguous=True)
    assert (choice.slot.seq_id, choice.copy_from.seq_id, choice.reused) == (5, 0, 150)


def test_a_short_prefix_elsewhere_is_not_worth_a_copy():
    free = slots(0, 5, cached={0: PROMPT[: MIN_COPIED_PREFIX - 1]})
    choice = choose_slot(free, {3, 4}, PROMPT, contiguous=True)
    assert (choice.slot.seq_id, choice.copy_from, choice.reused) == (5, None, 0)


def test_reuse_keeps_two_prompt_tokens_to_decode():
    # The last token's logits come from a batch of two rows, as in a full prefill.
    choice = choose_slot(slots(1, cached={1: PROMPT + [7]}), set(), PROMPT, contiguous=True)
    assert choice.reused == len(PROMPT) - 2
    assert choose_slot(slots(1, cached={1: [5, 6]}), set(), [5], contiguous=True).reused == 0


def test_a_unified_cache_only_looks_at_the_prefix():
    free = slots(0, 5, cached={0: PROMPT[:10]})
    choice = choose_slot(free, {3, 4}, PROMPT, contiguous=False)
    assert (choice.slot.seq_id, choice.copy_from, choice.reused) == (0, None, 10)


def test_a_prompt_sharing_only_a_prefix_leaves_that_slot_its_conversation():
    conversation = PROMPT[:30] + list(range(5000, 5100))  # a shared system prompt, then one request's own turns
    free = slots(0, 1, 2, cached={0: conversation})
    choice = choose_slot(free, set(), PROMPT, contiguous=True)
    assert (choice.slot.seq_id, choice.copy_from.seq_id, choice.reused) == (1, 0, 30)
    # The next turn of that conversation, and a retry of its prompt, stay where it is.
    assert choose_slot(free, set(), conversation + [9, 9, 9], contiguous=True).slot.seq_id == 0
    assert choose_slot(free, set(), conversation[:60] + [9, 9], contiguous=True).slot.seq_id == 0


def test_with_every_slot_holding_other_conversations_the_least_recently_used_gives_way():
    free = slots(4, 0, cached={4: list(range(5000, 5100)), 0: PROMPT[:20] + list(range(6000, 6100))})
    choice = choose_slot(free, set(), PROMPT, contiguous=True)
    assert (choice.slot.seq_id, choice.copy_from.seq_id, choice.reused) == (4, 0, 20)
