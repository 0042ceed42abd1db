"""Prompt-lookup drafting: propose the tokens that followed the last n-gram before.

Agent work repeats its context (code being edited, fields being extracted), so
the continuation of an earlier occurrence of the latest tokens is often right.
"""

from __future__ import annotations


class NgramDrafter:
    def __init__(self, tokens: list[int], max_n: int = 3, min_n: int = 2):
        self.max_n, self.min_n = max_n, min_n
        self.tokens: list[int] = []
        # n-gram -> where its most recent earlier continuation starts
        self._continuations: dict[tuple[int, ...], int] = {}
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        self.tokens.append(token)
        end = len(self.tokens) - 1  # the new token continues the n-grams that end just before it
        for n in range(self.min_n, self.max_n + 1):
            if end - n >= 0:
                self._continuations[tuple(self.tokens[end - n : end])] = end

    def propose(self, count: int) -> list[int]:
        """Up to `count` tokens that followed the longest matching n-gram."""
        if count <= 0:
            return []
        for n in range(self.max_n, self.min_n - 1, -1):
            if len(self.tokens) < n:
                continue
            start = self._continuations.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start : start + count]
        return []
