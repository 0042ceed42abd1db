"""Server-sent events in two framings: OpenAI's chat and completions (`data: {json}` lines, then
`data: [DONE]`), and named events (`event: <type>` before each `data:` line, no end marker), which
Anthropic's Messages and OpenAI's Responses streams use."""

from __future__ import annotations

import json
from typing import Any

from gallama.protocol.errors import RESPONSES_PATH, APIError, speaks_anthropic

OPENAI_STREAM_PATHS = ("/v1/chat/completions", "/v1/completions")


def openai_event(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


def named_event(payload: dict[str, Any]) -> str:
    return f"event: {payload['type']}\n{openai_event(payload)}"


def error_frames(path: str, error: APIError) -> str:
    """How a stream on `path` ends with an error: the API's own error event."""
    if speaks_anthropic(path) or path.startswith(RESPONSES_PATH):
        return named_event(error.stream_event(path))
    return openai_event(error.body()) + openai_event("[DONE]")
