"""Splitting a native reasoning model's `<think>...</think>` out of its answer."""

from __future__ import annotations

from dataclasses import dataclass

from gallama.agentic.text_stream import partial_suffix


@dataclass(frozen=True)
class ReasoningTags:
    open: str = "<think>"
    close: str = "</think>"


class ReasoningSplitter:
    """Feeds streamed text; returns (reasoning, content) parts as they become certain."""

    def __init__(self, tags: ReasoningTags, already_open: bool):
        """already_open: the prompt ended inside the opening tag (the template opened it)."""
        self.tags = tags
        self._state = "reasoning" if already_open else "start"
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        self._held += text
        reasoning = content = ""
        if self._state == "start":
            stripped = self._held.lstrip()
            if stripped.startswith(self.tags.open):
                self._held = stripped[len(self.tags.open):]
                self._state = "reasoning"
            elif self.tags.open.startswith(stripped):
                return "", ""  # still possibly the opening tag
            else:
                self._state = "content"
        if self._state == "reasoning":
            end = self._held.find(self.tags.close)
            if end >= 0:
                reasoning, self._held = self._held[:end], self._held[end + len(self.tags.close):].lstrip("\n")
                self._state = "content"
            else:
                keep = partial_suffix(self._held, [self.tags.close])
                reasoning, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep:]
                return reasoning, ""
        if self._state == "content":
            content, self._held = self._held, ""
        return reasoning, content

    def flush(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        return (held, "") if self._state == "reasoning" else ("", held)
