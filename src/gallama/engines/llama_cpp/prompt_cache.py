"""KV states of conversations that lost their slot, kept in host memory.

With more conversations than slots, a slot given to another prompt would lose
its conversation's cache, and that conversation's next turn would prefill it
all again. Instead its saved state (the sequence's own cells) goes here, least
recently used out first once the budget is full, and a prompt that continues a
saved conversation further than any slot does gets it restored into its slot.
llama-server keeps evicted slots in RAM the same way (`--cache-ram`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sized

import numpy as np

from gallama.engines.prefix import common_prefix_length, starts_with

# llama-server keeps 8 GiB; a smaller default suits the small machines gallama also runs on
# (1 GiB holds ~45,000 tokens of the bundled model's KV, ~8,000 of an 8B model's).
DEFAULT_PROMPT_CACHE_MB = 1024


def default_prompt_cache_mb(unified_kv: bool, on_gpu: bool) -> float:
    """The budget when none is given; none (0) with a unified cache on a GPU, where sequences decoded
    together interleave their cells and llama.cpp saves a sequence one cell range a layer, a blocking
    copy each: 8.6 s for one conversation of 190 tokens (H200, bundled model, flash attention off;
    docs/benchmarks.md), far more than prefilling it again. A stream of its own keeps a sequence's
    cells in one range."""
    return 0 if unified_kv and on_gpu else DEFAULT_PROMPT_CACHE_MB


@dataclass(frozen=True, eq=False)  # by identity: an array has no single truth value
class KeptLogits:
    """The logits that followed a prompt, the first `prompt_length` tokens of a cache: the same prompt again
    samples its first token from them and decodes nothing. Read-only, so a slot and a saved state share them."""

    logits: np.ndarray
    prompt_length: int

    @classmethod
    def of(cls, logits: np.ndarray, prompt_length: int) -> KeptLogits:
        kept = logits.copy()  # the decode's row is a view that the next decode overwrites
        kept.flags.writeable = False
        return cls(kept, prompt_length)

    def serve(self, cached: list[int], prompt: list[int]) -> bool:
        """Whether they are this prompt's, in a cache that holds `cached`."""
        return self.prompt_length == len(prompt) and starts_with(cached, prompt)


@dataclass
class SavedPrompt:
    tokens: list[int]
    state: Sized  # llama.cpp's saved sequence state, opaque here
    kept: KeptLogits | None = None  # the slot's kept logits, restored with the state

    @property
    def size_bytes(self) -> int:
        return len(self.state) + (self.kept.logits.nbytes if self.kept else 0)

    def holds_prompt_logits(self, prompt: list[int]) -> bool:
        return self.kept is not None and self.kept.serve(self.tokens, prompt)


class PromptCache:
    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self._entries: list[SavedPrompt] = []  # least recently used first

    @property
    def size_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, tokens: list[int]) -> bool:
        """Whether some entry starts with these tokens (so saving them again adds nothing)."""
        return any(starts_with(entry.tokens, tokens) for entry in self._entries)

    def add(self, tokens: list[int], save: Callable[[], Sized], kept: KeptLogits | None = None) -> None:
        """Keeps the state `save` returns for these tokens (and the logits kept for a prompt they start with);
        `save` is not called when nothing would be kept."""
        if self.capacity_bytes == 0 or self.holds(tokens):
            return
        entry = SavedPrompt(list(tokens), save(), kept)
        if entry.size_bytes > self.capacity_bytes:
            return
        # An entry these tokens continue is held whole by the new one.
        self._entries = [e for e in self._entries if not starts_with(tokens, e.tokens)]
        self._entries.append(entry)
        while self.size_bytes > self.capacity_bytes:
            self._entries.pop(0)

    def longest_match(self, prompt: list[int]) -> SavedPrompt | None:
        """The entry sharing the longest prefix with the prompt (None: none shares any)."""
        best, length = None, 0
        for entry in self._entries:
            shared = common_prefix_length(entry.tokens, prompt)
            if shared > length:
                best, length = entry, shared
        return best

    def take(self, entry: SavedPrompt, length: int) -> None:
        """An entry's first `length` tokens were restored into a slot: the slot holds them now.

        Saving the slot's own conversation before the restore may have dropped the entry already
        (the budget, or a conversation that continues it): then there is nothing left to move."""
        kept = [e for e in self._entries if e is not entry]
        if len(kept) == len(self._entries):
            return
        self._entries = kept
        if length < len(entry.tokens):  # its tail is still only here; used last, it goes last
            self._entries.append(entry)
