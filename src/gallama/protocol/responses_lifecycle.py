"""What the front must know of a Responses stream: the response's identity, which it chooses and hands to
the worker, and the events that end a stream whose worker died (kept apart from the request translation,
so that the front loads none of the chat core)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from gallama.protocol.errors import APIError


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


RESPONSE_ID_HEADER = "x-gallama-response-id"
RESPONSE_CREATED_HEADER = "x-gallama-response-created-at"


@dataclass(frozen=True)
class ResponseIdentity:
    """A response's id and creation time. The front chooses them and hands them to the worker in request
    headers, so that it can end the client's stream with this very response's response.failed when the
    worker dies mid-stream (the openai SDK refuses a lifecycle event of another response id)."""

    id: str
    created_at: int

    @classmethod
    def new(cls) -> "ResponseIdentity":
        return cls(new_item_id("resp"), int(time.time()))

    def headers(self) -> dict[str, str]:
        return {RESPONSE_ID_HEADER: self.id, RESPONSE_CREATED_HEADER: str(self.created_at)}

    @classmethod
    def from_headers(cls, headers: Any) -> "ResponseIdentity":
        """The front's choice; a new identity for a request that came without one (an app run without a front)."""
        chosen, created = headers.get(RESPONSE_ID_HEADER), headers.get(RESPONSE_CREATED_HEADER, "")
        return cls(chosen, int(created)) if chosen and created.isdigit() else cls.new()


def error_object(error: APIError) -> dict[str, Any]:
    return {"code": error.code or error.error_type, "message": error.message}


def error_event_fields(error: APIError) -> dict[str, Any]:
    return {"code": error.code or error.error_type, "message": error.message, "param": error.param}


def lost_stream_events(identity: ResponseIdentity, model: str, sequence: int, error: APIError) -> list[dict[str, Any]]:
    """How the front ends a stream whose worker died: the error event and this response's response.failed,
    numbered from `sequence` (above every event the worker sent). The front never saw the output items: the
    response leaves `output` out, and the openai SDK fills it with the items the client received."""
    response = {"id": identity.id, "object": "response", "created_at": identity.created_at, "status": "failed",
                "error": error_object(error), "incomplete_details": None, "model": model}
    return [{"type": "error", "sequence_number": sequence, **error_event_fields(error)},
            {"type": "response.failed", "sequence_number": sequence + 1, "response": response}]
