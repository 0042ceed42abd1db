"""The engine thread shared by the batching engines: the queue, the step loop, cancellation, forced tokens.

An engine calls `_start_thread` once its model is loaded, holds `forced_total` and `vocab_size`, and gives `_drop_cancelled`, `_admit` (both under the
lock), `_step(members)`, `_release_failed(sequence)` and `_emit(sequence, token, logits)`.
Its sequences have `request`, `emit`, `cancelled` and `pending` (tokens to feed next).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import llguidance
import llguidance.numpy
import numpy as np

from gallama.engines.base import EngineError, EngineOverloaded, TokenEvent
from gallama.engines.outbox import Outbox
from gallama.engines.token_events import settle

log = logging.getLogger(__name__)
T = TypeVar("T")


class EngineThread:
    def _start_thread(self, queue_size: int, model_path: str) -> None:
        """Starts the engine thread, after the model is loaded."""
        self._waiting: deque = deque()
        self._running: list = []
        self._queue_size = queue_size
        self._outbox = Outbox()  # events leave the engine thread once per step
        self._llg_executor = llguidance.LLExecutor()  # constraint masks are computed off the GIL
        self._mask_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="masks")
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"engine:{os.path.basename(model_path)}", daemon=True)
        self._thread.start()

    def _new_events(self) -> tuple[asyncio.Queue, Callable[[TokenEvent | Exception], None]]:
        """A request's event queue on the caller's loop, and the function that fills it from the engine thread."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent | Exception] = asyncio.Queue()

        def emit(event: TokenEvent | Exception) -> None:
            self._outbox.put(loop, events, event)

        return events, emit

    def _enqueue(self, sequence: Any) -> None:
        with self._lock:
            if self._closed:
                raise EngineError("the engine is shut down")
            if len(self._waiting) >= self._queue_size:
                raise EngineOverloaded()
            self._waiting.append(sequence)
            self._lock.notify()

    def _cancel(self, sequence: Any) -> None:
        with self._lock:
            sequence.cancelled = True
            self._lock.notify()

    def _stop_thread(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=10)
        self._mask_pool.shutdown()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._drop_cancelled()
                self._admit()
                while not self._running and not self._closed:
                    self._outbox.flush()  # a request that failed to start has its error out before the wait
                    self._lock.wait()
                    self._drop_cancelled()
                    self._admit()
                if self._closed:
                    for sequence in [*self._running, *self._waiting]:
                        sequence.emit(EngineError("the server is shutting down"))
                    self._outbox.flush()
                    return
                members = list(self._running)
            try:
                self._step(members)
            except Exception as error:  # a failed step ends the requests in it, not the engine
                log.exception("decode step failed")
                with self._lock:
                    for sequence in members:
                        sequence.emit(EngineError(f"decoding failed: {error}"))
                        self._release_failed(sequence)
            finally:
                self._outbox.flush()

    def _with_masks(self, sequences: list[Any], forward: Callable[[], T]) -> tuple[T, dict[int, np.ndarray]]:
        """Runs `forward` while llguidance computes the next-token masks of the sequences' constraints
        (in parallel, off the GIL: they depend only on the tokens consumed so far); returns its result
        and each constrained sequence's mask row, by id of the sequence."""
        constrained = [s for s in sequences if s.request.constraint is not None]
        if not constrained:
            return forward(), {}
        masks = llguidance.numpy.allocate_token_bitmask(len(constrained), self.vocab_size)
        pending = self._mask_pool.submit(llguidance.numpy.fill_next_token_bitmask_par, self._llg_executor,
                                         [(s.request.constraint, i) for i, s in enumerate(constrained)], masks)
        try:
            result = forward()
        finally:
            pending.result()
        return result, {id(s): masks[i] for i, s in enumerate(constrained)}

    def _fail(self, sequence: Any, error: Exception) -> None:
        sequence.emit(error)
        with self._lock:
            self._release_failed(sequence)

    def _settle(self, sequence: Any, event: TokenEvent, end_of_generation: bool, logits: Any) -> bool:
        """Gives a generated token's event its logprobs and finish reason (token_events.settle);
        False when the constraint rejected the token, which fails the sequence."""
        try:
            settle(sequence.request, event, end_of_generation, sequence.generated, logits)
        except EngineError as error:
            self._fail(sequence, error)
            return False
        return True

    def _fast_forward(self, sequence: Any) -> None:
        """Emits the tokens the constraint forces next (a JSON key, the quote after it) without
        sampling them: they join the sequence's next forward pass as extra rows, which costs far less
        than a step each. Not with logprobs, which need the model's view of every token."""
        request = sequence.request
        if request.constraint is None or request.top_logprobs is not None:
            return
        for token in request.constraint.compute_ff_tokens():
            self.forced_total += 1
            if not self._emit(sequence, token, logits=None):
                return
            sequence.pending.append(token)
