"""The tokens of one queued request as an async iterator (a `TokenStream`), for the batching engines.

The engine thread puts `TokenEvent`s (or an exception) on the queue; a consumer that is
cancelled (its client left) cancels the sequence, which the engine drops at its next step.
The engine gives `_cancel(sequence)`; the sequence has a `cancelled` flag.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gallama.engines.base import TokenEvent


class SequenceStream:
    """The tokens of one queued request (a `TokenStream`); `cancel` frees its slot at the next step."""

    def __init__(self, engine: Any, sequence: Any, events: asyncio.Queue):
        self._engine = engine
        self._sequence = sequence
        self._events = events
        self._done = False

    def __aiter__(self) -> "SequenceStream":
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            event = await self._events.get()
        except BaseException:  # the consumer was cancelled (client gone): stop decoding for it
            self.cancel()
            raise
        if isinstance(event, Exception):
            self.cancel()
            raise event
        if event.finish_reason is not None:
            self._done = True
        return event

    def ready(self) -> bool:
        """Whether the next event is already here (no wait)."""
        return not self._events.empty()

    def cancel(self) -> None:
        self._done = True
        if not self._sequence.cancelled:
            self._engine._cancel(self._sequence)
