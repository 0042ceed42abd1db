"""A choice that thinks first: the reasoning pass, then the answer conditioned on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Callable

from gallama.agentic.text_stream import partial_suffix
from gallama.agentic.thinking import close_open_tags
from gallama.serving.served_model import ServedModel
from gallama.server.choices import ChoiceRun, ChoiceSpec, Piece


@dataclass
class ReasoningPiece(Piece):
    """Text of the thinking pass: reasoning, never content."""


class ThinkingRun:
    """Same interface as ChoiceRun. The answer's request is built once the thinking is known."""

    def __init__(self, model: ServedModel, thinking: ChoiceSpec, answer_spec: Callable[[str], ChoiceSpec],
                 tags: list[str]):
        """tags: the thinking template's tags, which the thinking's pieces never cut in half."""
        self.model = model
        self._tags = tags
        self._thinking = ChoiceRun(model, thinking)
        self._answer_spec = answer_spec
        self._answer: ChoiceRun | None = None
        self._cancelled = False

    @property
    def completion_tokens(self) -> int:
        return self._thinking.completion_tokens + (self._answer.completion_tokens if self._answer else 0)

    @property
    def drafted(self) -> int:
        return self._thinking.drafted + (self._answer.drafted if self._answer else 0)

    @property
    def cached_prompt_tokens(self) -> int:
        return self._thinking.cached_prompt_tokens  # the request's own prompt is the thinking pass's

    @property
    def accepted(self) -> int:
        return self._thinking.accepted + (self._answer.accepted if self._answer else 0)

    def cancel(self) -> None:
        self._cancelled = True
        self._thinking.cancel()
        if self._answer is not None:
            self._answer.cancel()

    async def pieces(self) -> AsyncIterator[Piece]:
        thought, held, finish = "", "", None
        async for piece in self._thinking.pieces():
            # A tag still being written is held back: a cut there would leave half a tag.
            held += piece.text
            cut = len(held) - partial_suffix(held, self._tags)
            ready, held = held[:cut], held[cut:]
            thought += ready
            finish = piece.finish_reason
            yield ReasoningPiece(ready, piece.events)
        if self._cancelled:
            return
        if finish == "length":  # thinking_max_tokens reached: close the thinking, then answer
            held = close_open_tags(thought)
        thought += held
        yield ReasoningPiece(held)
        self._answer = ChoiceRun(self.model, self._answer_spec(thought), deadline=self._thinking.deadline)
        async for piece in self._answer.pieces():
            yield piece
