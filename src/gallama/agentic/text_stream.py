"""Turning a stream of token bytes into text, and cutting it at stop strings."""

from __future__ import annotations

import codecs
from typing import Iterable


def partial_suffix(text: str, tags: Iterable[str]) -> int:
    """The length of the longest end of `text` that begins one of `tags` without being all of it: what a
    stream holds back until the text after it says whether the tag follows."""
    longest = 0
    for tag in tags:
        for length in range(min(len(tag) - 1, len(text)), longest, -1):
            if text.endswith(tag[:length]):
                longest = length
                break
    return longest


class Utf8Stream:
    """Decodes token bytes incrementally; a character split across tokens waits for its end."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopStringCutter:
    """Finds the first stop string in streamed text.

    Text that could still turn into a stop string is held back, so a stop string
    never reaches the client, even when it spans several tokens.
    """

    def __init__(self, stops: list[str], keep_stop: bool = False):
        self.stops = [s for s in stops if s]
        self.keep_stop = keep_stop
        self._held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Returns the text that is safe to emit; sets `matched` once a stop string is found."""
        if self.matched is not None:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        hits = [(buffer.find(s), s) for s in self.stops]
        hits = [(index, s) for index, s in hits if index >= 0]
        if hits:
            index, stop = min(hits)
            self.matched = stop
            self._held = ""
            return buffer[: index + len(stop)] if self.keep_stop else buffer[:index]
        hold = partial_suffix(buffer, self.stops)
        self._held = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """The held-back text, once the stream has ended without a stop string."""
        held, self._held = self._held, ""
        return held
