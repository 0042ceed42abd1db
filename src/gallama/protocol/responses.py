"""OpenAI response objects and stream chunks, built as plain dicts in OpenAI's shape."""

from __future__ import annotations

import secrets
import time
from typing import Any, Callable

from gallama import __version__
from gallama.engines.base import TokenEvent

SYSTEM_FINGERPRINT = f"gallama-{__version__}"


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int, runs=()) -> dict:
    """OpenAI's usage: prompt tokens served from the KV cache; with speculative decoding, drafted tokens."""
    cached = max((getattr(run, "cached_prompt_tokens", 0) for run in runs), default=0)
    result: dict = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": min(cached, prompt_tokens)},
    }
    drafted = sum(getattr(run, "drafted", 0) for run in runs)
    if drafted:
        accepted = sum(getattr(run, "accepted", 0) for run in runs)
        result["completion_tokens_details"] = {
            "accepted_prediction_tokens": accepted,
            "rejected_prediction_tokens": drafted - accepted,
        }
    return result


def model_card(name: str, created: int, context_length: int | None, **extra: Any) -> dict[str, Any]:
    """A model as /v1/models lists it (a worker's own, or the front's with its instances and status)."""
    card: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "gallama"}
    if context_length is not None:
        card["context_length"] = context_length
    return {**card, **extra}


class ResponseHeader:
    """The fields every object and chunk of one response share."""

    def __init__(self, prefix: str, object_name: str, model: str):
        self.id = new_id(prefix)
        self.object = object_name
        self.created = int(time.time())
        self.model = model

    def wrap(self, **fields: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            **fields,
        }


TokenText = Callable[[int], bytes]


def chat_logprobs(events: list[TokenEvent], token_bytes: TokenText) -> list[dict[str, Any]]:
    """The `logprobs.content` entries of a chat choice."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        raw = token_bytes(token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return [
        {**entry(e.token, e.logprob), "top_logprobs": [entry(t, lp) for t, lp in e.top_logprobs or []]}
        for e in events
        if e.logprob is not None
    ]


class CompletionLogprobs:
    """The legacy completions `logprobs` object, built up as tokens arrive."""

    def __init__(self, token_bytes: TokenText, text_offset: int = 0):
        self._token_bytes = token_bytes
        self._offset = text_offset
        self.tokens: list[str] = []
        self.token_logprobs: list[float | None] = []
        self.top_logprobs: list[dict[str, float] | None] = []
        self.text_offset: list[int] = []

    def _text(self, token: int) -> str:
        return self._token_bytes(token).decode("utf-8", errors="replace")

    def add(self, events: list[TokenEvent]) -> dict[str, Any]:
        """Adds the events; returns the entries for just these (for a stream chunk)."""
        start = len(self.tokens)
        for event in events:
            text = self._text(event.token)
            self.tokens.append(text)
            self.token_logprobs.append(event.logprob)
            self.top_logprobs.append({self._text(t): lp for t, lp in event.top_logprobs or []})
            self.text_offset.append(self._offset)
            self._offset += len(text)
        return self._view(start)

    def _view(self, start: int = 0) -> dict[str, Any]:
        return {
            "tokens": self.tokens[start:],
            "token_logprobs": self.token_logprobs[start:],
            "top_logprobs": self.top_logprobs[start:],
            "text_offset": self.text_offset[start:],
        }

    def as_dict(self) -> dict[str, Any]:
        return self._view()
