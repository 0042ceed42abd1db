"""Token events collected on the engine thread and handed to their asyncio consumers once per step.

Waking an event loop costs a system call and a loop iteration; with many
sequences, doing it for every token costs more than the token's own handling.
One hand-over per loop per decode step delivers every event of the step at once,
which also lets a consumer send all the tokens it finds waiting in one chunk.
"""

from __future__ import annotations

import asyncio
from typing import Any


def _deliver(deliveries: list[tuple[asyncio.Queue, Any]]) -> None:
    for queue, event in deliveries:
        queue.put_nowait(event)


class Outbox:
    """Used by the engine thread only."""

    def __init__(self) -> None:
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}

    def put(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, event: Any) -> None:
        self._pending.setdefault(loop, []).append((queue, event))

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for loop, deliveries in pending.items():
            try:
                loop.call_soon_threadsafe(_deliver, deliveries)
            except RuntimeError:  # the consumers' loop is gone; nobody waits for these events
                pass
