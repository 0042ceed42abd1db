"""One generated choice: engine tokens turned into text pieces, cut at stop strings."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from functools import partial
from typing import AsyncIterator, Callable, TypeVar

from gallama.agentic.text_stream import StopStringCutter, Utf8Stream
from gallama.engines.base import GenerationRequest, TokenEvent
from gallama.protocol.errors import RequestTimedOut
from gallama.serving.served_model import ServedModel


@dataclass
class Piece:
    text: str
    events: list[TokenEvent] = field(default_factory=list)  # the tokens behind this text (for logprobs)
    finish_reason: str | None = None
    stop_string: str | None = None  # the stop string that ended the choice


@dataclass
class ChoiceSpec:
    request: GenerationRequest
    stops: list[str] = field(default_factory=list)
    keep_stop: bool = False


class ChoiceRun:
    """A choice whose engine request is queued as soon as the run is made.

    It ends early with an APIError when it runs past the model's request timeout, or when
    `interrupt` stops it (shutdown); either way its engine sequence is cancelled.
    """

    def __init__(self, model: ServedModel, spec: ChoiceSpec, deadline: float | None = None):
        self.model = model
        self.spec = spec
        self.tokens = model.engine.generate(spec.request)
        self.completion_tokens = 0
        self.drafted = self.accepted = 0  # speculative decoding: drafted tokens and those kept
        self.cached_prompt_tokens = 0
        self.queued_at = time.perf_counter()  # for the latency metrics (the loop's clock may tick in ms)
        if deadline is None and model.request_timeout is not None:
            deadline = asyncio.get_running_loop().time() + model.request_timeout
        self.deadline = deadline  # loop time; a thinking choice's answer keeps its thinking's deadline
        self.interruption: Exception | None = None
        self._waiting: asyncio.Timeout | None = None
        model.metrics.prompt_tokens.inc(len(spec.request.prompt_tokens))
        model.runs.add(self)
        if model.ending is not None:
            self.interrupt(model.ending)

    def cancel(self) -> None:
        self.tokens.cancel()
        self.model.runs.discard(self)

    def interrupt(self, error: Exception) -> None:
        """Ends the run with `error` at once, even while it waits for a token."""
        self.interruption = error
        if self._waiting is not None:
            self._waiting.reschedule(asyncio.get_running_loop().time())

    async def _next_event(self) -> TokenEvent | None:
        if self.interruption is not None:
            raise self.interruption
        try:
            # Scoped to this one wait (never across a yield), so the timeout only ever cancels the engine wait.
            async with asyncio.timeout_at(self.deadline) as self._waiting:
                return await anext(self.tokens)
        except StopAsyncIteration:  # cancelled by the caller
            return None
        except TimeoutError:
            raise self.interruption or RequestTimedOut(self.model.request_timeout, self.completion_tokens) from None
        finally:
            self._waiting = None

    async def pieces(self) -> AsyncIterator[Piece]:
        metrics = self.model.metrics
        utf8 = Utf8Stream()
        cutter = StopStringCutter(self.spec.stops, keep_stop=self.spec.keep_stop)
        waiting: list[TokenEvent] = []
        text = ""
        last = self.queued_at
        try:
            while (event := await self._next_event()) is not None:
                now = time.perf_counter()
                (metrics.time_per_token if self.completion_tokens else metrics.time_to_first_token).observe(now - last)
                last = now
                if not self.completion_tokens:
                    self.cached_prompt_tokens = event.cached_prompt_tokens
                self.completion_tokens += 1
                if event.finish_reason is not None:
                    self.drafted, self.accepted = event.drafted, event.accepted
                waiting.append(event)
                text += cutter.feed(utf8.feed(event.piece))
                if cutter.matched is not None:
                    yield Piece(text, waiting, "stop", cutter.matched)
                    return
                if event.finish_reason is not None:
                    text += cutter.feed(utf8.flush())
                    if cutter.matched is None:
                        text += cutter.flush()
                    yield Piece(text, waiting, "stop" if cutter.matched else event.finish_reason, cutter.matched)
                    return
                # Tokens that arrived together (a busy server, accepted drafts) go out as one piece.
                if text and not self.tokens.ready():
                    yield Piece(text, waiting)
                    waiting, text = [], ""
        finally:
            metrics.generated_tokens.inc(self.completion_tokens)
            self.cancel()


Run = TypeVar("Run")


def queue_all(starts: list[Callable[[], Run]]) -> list[Run]:
    """Starts every run, or none: a full queue (EngineOverloaded, a 429) before any output cancels those started."""
    runs: list = []
    try:
        for start in starts:
            runs.append(start())
    except BaseException:
        for run in runs:
            run.cancel()
        raise
    return runs


def start_choices(model: ServedModel, specs: list[ChoiceSpec]) -> list[ChoiceRun]:
    return queue_all([partial(ChoiceRun, model, spec) for spec in specs])


async def merge_choices(streams: list[AsyncIterator[Piece]]) -> AsyncIterator[tuple[int, Piece]]:
    """Interleaves several choices' pieces as they come, tagged with the choice index."""
    if len(streams) == 1:
        async for piece in streams[0]:
            yield 0, piece
        return
    queue: asyncio.Queue[tuple[int, Piece | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Piece]) -> None:
        try:
            async for piece in stream:
                await queue.put((index, piece))
            await queue.put((index, None))
        except BaseException as error:  # handed to the consumer, which re-raises it
            await queue.put((index, error))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
