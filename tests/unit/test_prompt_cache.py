"""The host-memory cache of conversations that lost their slot: what it keeps, finds and drops."""

from gallama.engines.llama_cpp.prompt_cache import (
    DEFAULT_PROMPT_CACHE_MB,
    KeptLogits,
    PromptCache,
    default_prompt_cache_mb,
)


def state(size):
    return bytes(size)


def test_finds_the_entry_sharing_the_longest_prefix():
    cache = PromptCache(capacity_bytes=1000)
    cache.add([1, 2, 3, 4], lambda: state(10))
    cache.add([1, 2, 9, 9, 9], lambda: state(10))
    assert cache.longest_match([1, 2, 3, 4, 5]).tokens == [1, 2, 3, 4]
    assert cache.longest_match([1, 2, 9, 7]).tokens == [1, 2, 9, 9, 9]
    assert cache.longest_match([8]) is None


def test_least_recently_used_entries_go_first_once_full():
    cache = PromptCache(capacity_bytes=25)
    cache.add([1], lambda: state(10))
    cache.add([2], lambda: state(10))
    cache.take(cache.longest_match([1, 5]), 1)  # restored whole: the slot holds it now
    assert len(cache) == 1
    cache.add([3], lambda: state(10))
    cache.add([4], lambda: state(10))  # 30 bytes: [2] is the oldest
    assert [cache.longest_match([t]) is not None for t in (2, 3, 4)] == [False, True, True]
    assert cache.size_bytes == 20


def test_an_entry_restored_in_part_stays_and_is_used_last():
    cache = PromptCache(capacity_bytes=25)
    cache.add([1, 2, 3], lambda: state(10))
    cache.add([5], lambda: state(10))
    cache.take(cache.longest_match([1, 2, 7]), 2)
    cache.add([6], lambda: state(10))  # over budget: [5] goes, not the entry just used
    assert cache.longest_match([1, 2, 3]).tokens == [1, 2, 3]
    assert cache.longest_match([5]) is None


def test_an_entry_dropped_while_the_slot_was_saved_is_taken_without_error():
    # The engine finds the entry to restore, saves the slot's own conversation first (which can push
    # that entry out of the budget), then takes the entry: this once raised and killed the engine thread.
    cache = PromptCache(capacity_bytes=25)
    cache.add([1, 2, 3], lambda: state(10))
    cache.add([5], lambda: state(10))
    found = cache.longest_match([1, 2, 3, 4])
    cache.add([7, 7], lambda: state(10))  # over budget: the oldest, the one found, goes
    cache.take(found, 3)
    assert cache.longest_match([1, 2, 3]) is None and len(cache) == 2
    continued = cache.longest_match([7, 7, 1])
    cache.add([7, 7, 8], lambda: state(10))  # continues [7, 7], which it replaces
    cache.take(continued, 1)
    assert cache.longest_match([7, 7]).tokens == [7, 7, 8] and len(cache) == 2


def test_a_saved_conversation_replaces_its_earlier_turns_and_is_not_saved_twice():
    cache = PromptCache(capacity_bytes=1000)
    cache.add([1, 2], lambda: state(10))
    cache.add([1, 2, 3, 4], lambda: state(20))  # the next turn holds the first whole
    assert len(cache) == 1 and cache.holds([1, 2])
    saved = []
    cache.add([1, 2, 3], lambda: saved.append(1) or state(15))  # already held by the longer one
    assert len(cache) == 1 and cache.size_bytes == 20
    assert saved == []  # nor saved: saving a state copies its cells


def test_a_state_larger_than_the_budget_is_not_kept():
    cache = PromptCache(capacity_bytes=5)
    cache.add([1], lambda: state(10))
    assert len(cache) == 0


def test_a_cache_of_no_size_saves_nothing():
    def save():
        raise AssertionError("a state was saved for a cache that keeps none")

    cache = PromptCache(capacity_bytes=0)
    cache.add([1], save)
    assert len(cache) == 0


def test_no_saved_conversations_by_default_where_saving_one_takes_seconds():
    assert default_prompt_cache_mb(unified_kv=False, on_gpu=False) == DEFAULT_PROMPT_CACHE_MB
    assert default_prompt_cache_mb(unified_kv=True, on_gpu=False) == DEFAULT_PROMPT_CACHE_MB
    assert default_prompt_cache_mb(unified_kv=False, on_gpu=True) == DEFAULT_PROMPT_CACHE_MB
    assert default_prompt_cache_mb(unified_kv=True, on_gpu=True) == 0


def test_kept_logits_count_in_the_budget_and_serve_only_their_own_prompt():
    import numpy as np

    logits = np.zeros(4, dtype=np.float32)  # 16 bytes
    cache = PromptCache(capacity_bytes=30)
    cache.add([1, 2, 3, 4], lambda: state(10), KeptLogits.of(logits, 3))  # the prompt [1, 2, 3], then an answer
    assert cache.size_bytes == 26
    entry = cache.longest_match([1, 2, 3])
    assert entry.holds_prompt_logits([1, 2, 3])
    assert not entry.holds_prompt_logits([1, 2]) and not entry.holds_prompt_logits([1, 2, 3, 4])
    assert not entry.holds_prompt_logits([1, 2, 9])
    cache.add([7], lambda: state(10))  # 36 bytes: the oldest goes
    assert cache.longest_match([1, 2, 3]) is None and cache.size_bytes == 10
    cache.add([8, 8], lambda: state(16), KeptLogits.of(logits, 2))  # 32 bytes with its logits: never fits
    assert cache.longest_match([8, 8]) is None
