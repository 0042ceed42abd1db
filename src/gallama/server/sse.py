"""A stream of API chunks written as server-sent events: to the client's own socket when the front handed
it over, else as a streaming response; the engine runs are cancelled when the stream ends or the client leaves."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, AsyncIterator

from fastapi.responses import Response, StreamingResponse
from starlette.requests import Request

from gallama.protocol.errors import RESPONSES_PATH, APIError, ServerFailed, as_api_error
from gallama.protocol.sse_frames import OPENAI_STREAM_PATHS, error_frames, named_event, openai_event
from gallama.server.choices import ChoiceRun
from gallama.server.handover import handed_over

log = logging.getLogger(__name__)


def stream_error(error: Exception) -> APIError:
    """What a stream that fails after its headers tells the client: the API error, else a server failure (logged)."""
    known = as_api_error(error)
    if known is None:
        log.error("stream failed", exc_info=error)
        known = ServerFailed(f"generation failed: {error}")
    return known


def _cancel(runs: list[ChoiceRun]) -> None:
    for run in runs:
        run.cancel()


async def _frames(chunks: AsyncIterator[dict[str, Any]], runs: list[ChoiceRun], path: str) -> AsyncIterator[str]:
    frame = openai_event if path.startswith(OPENAI_STREAM_PATHS) else named_event
    try:
        async for chunk in chunks:
            yield frame(chunk)
    except Exception as error:  # noqa: BLE001 (an engine failure mid-stream still ends the stream cleanly)
        # Headers are already sent; the error travels as an event, as the API's own streams carry it.
        yield error_frames(path, stream_error(error))
        return
    finally:
        # Also reached when the client disconnects and the response task is cancelled.
        _cancel(runs)
    if frame is openai_event:
        yield openai_event("[DONE]")


SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse_response(chunks: AsyncIterator[dict[str, Any]], runs: list[ChoiceRun], request: Request) -> Response:
    frames = _frames(chunks, runs, request.url.path)
    own_socket = handed_over(request, frames, {"content-type": "text/event-stream; charset=utf-8", **SSE_HEADERS},
                             stop=partial(_cancel, runs), numbered=request.url.path.startswith(RESPONSES_PATH))
    return own_socket or StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)
