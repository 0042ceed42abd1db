"""Server-sent events in OpenAI's framing: `data: {json}` lines, then `data: [DONE]`."""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any, AsyncIterator

from fastapi.responses import Response, StreamingResponse
from starlette.requests import Request

from gallama.protocol.errors import APIError
from gallama.server.choices import ChoiceRun
from gallama.server.handover import handed_over

log = logging.getLogger(__name__)


def _event(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


def _cancel(runs: list[ChoiceRun]) -> None:
    for run in runs:
        run.cancel()


async def _frames(chunks: AsyncIterator[dict[str, Any]], runs: list[ChoiceRun]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield _event(chunk)
    except APIError as error:
        # Headers are already sent; the error travels as an event, as OpenAI does.
        yield _event(error.body())
    except Exception as error:  # an engine failure mid-stream still ends the stream cleanly
        log.exception("stream failed")
        yield _event({"error": {"message": f"generation failed: {error}", "type": "server_error", "param": None, "code": None}})
    finally:
        # Also reached when the client disconnects and the response task is cancelled.
        _cancel(runs)
    yield _event("[DONE]")


SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse_response(chunks: AsyncIterator[dict[str, Any]], runs: list[ChoiceRun], request: Request) -> Response:
    frames = _frames(chunks, runs)
    own_socket = handed_over(request, frames, {"content-type": "text/event-stream; charset=utf-8", **SSE_HEADERS},
                             stop=partial(_cancel, runs))
    return own_socket or StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)
