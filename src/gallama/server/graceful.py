"""uvicorn's server with SIGTERM/SIGINT as a clean stop: a hook starts at once, and the process exits 0."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import uvicorn


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], Awaitable[None]]):
        super().__init__(config)
        self.on_stop = on_stop
        self.stopping: asyncio.Task | None = None

    def handle_exit(self, sig, frame) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        # uvicorn raises a handled signal again once it has shut down: the process would end by the signal, not 0.
        self._captured_signals.clear()
        if first:
            # Runs in a signal handler: the hook starts on the loop, beside uvicorn's own shutdown.
            loop = asyncio.get_running_loop()
            loop.call_soon_threadsafe(self._start_hook)

    def _start_hook(self) -> None:
        self.stopping = asyncio.ensure_future(self.on_stop())
