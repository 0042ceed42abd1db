"""What stands in front of every route: API keys, body size, request ids, one log line, metrics.

A pure ASGI middleware, so streamed responses pass through untouched.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gallama.protocol.errors import APIError
from gallama.server.handover import HANDED_OVER_STATUS

log = logging.getLogger("gallama.requests")

ADMIN_PATHS = ("/add_model", "/remove_model")
MISSING_KEY = "Missing or invalid API key: send 'Authorization: Bearer <key>' (or 'x-api-key: <key>')."
PUBLIC_PATHS = ("/health", "/metrics")


@dataclass
class GuardSettings:
    api_keys: list[str] = field(default_factory=list)  # empty: no key needed
    admin_keys: list[str] = field(default_factory=list)  # empty: management routes need only an API key
    max_body_bytes: int = 8 * 1024 * 1024


def _matches(candidate: str, keys: list[str]) -> bool:
    # Compare against every key, in constant time each, so timing tells nothing.
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate.encode(), key.encode())
    return found


class Metrics:
    """The front's own request metrics, plus whatever `sources` collects at scrape time (the workers')."""

    def __init__(self, sources: Callable[[], Awaitable[object]] | None = None) -> None:
        self.sources = sources
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gallama_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "gallama_request_seconds", "Time to the end of the response", ["endpoint"], registry=self.registry
        )

    async def render(self) -> bytes:
        text = generate_latest(self.registry)
        return text + generate_latest(await self.sources()) if self.sources else text


# In the request scope: (the model asked for, the model that answered), when the front fell back to a default.
MODEL_FALLBACK = "gallama.model_fallback"


# Paths that end with an id: one metrics label for all of them, not one per id.
ID_PATHS = ("/v1/models/", "/v1/responses/")


def _endpoint(path: str) -> str:
    """The metrics label of a request's path."""
    for prefix in ID_PATHS:
        if path.startswith(prefix) and len(path) > len(prefix):
            return prefix + "{id}"
    return path if path.startswith(("/v1/", "/tokenize", "/detokenize")) else "other"


class Guard:
    def __init__(self, app, settings: GuardSettings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id")
        if not request_id:  # the route passes it on to a worker that answers the client itself
            request_id = uuid.uuid4().hex
            scope["headers"] = [*scope["headers"], (b"x-request-id", request_id.encode())]
        status_box = {"status": 500}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status_box["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            refusal = self._refusal(path, headers)
            if refusal is None and "content-length" not in headers and scope["method"] in ("POST", "PUT"):
                receive, refusal = await self._buffered(receive)
            if refusal is not None:
                await self._error(send_with_id, path, *refusal)
            elif path == "/metrics":
                await self._plain(send_with_id, await self.metrics.render(), CONTENT_TYPE_LATEST)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            status_box["status"] = scope.get(HANDED_OVER_STATUS, status_box["status"])
            endpoint = _endpoint(path)
            self.metrics.requests.labels(endpoint, str(status_box["status"])).inc()
            self.metrics.latency.labels(endpoint).observe(elapsed)
            fallback = scope.get(MODEL_FALLBACK)
            note = f" (model '{fallback[0]}' is not served: answered by '{fallback[1]}', the default)" if fallback else ""
            log.info("%s %s %s %d %.1fms%s", request_id, scope["method"], path, status_box["status"], elapsed * 1000, note)

    def _refusal(self, path: str, headers: dict[str, str]) -> tuple[int, str, str] | None:
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.settings.max_body_bytes:
            return 413, f"The request body exceeds {self.settings.max_body_bytes} bytes.", "request_too_large"
        if path in PUBLIC_PATHS or not (self.settings.api_keys or self.settings.admin_keys):
            return None
        auth = headers.get("authorization", "")
        # Anthropic's clients send the key as x-api-key.
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key", "").strip()
        admin = _matches(key, self.settings.admin_keys)
        if path in ADMIN_PATHS and self.settings.admin_keys:
            if admin:
                return None
            if _matches(key, self.settings.api_keys):
                return 403, "This route needs the admin key.", "forbidden"
            return 401, MISSING_KEY, "invalid_api_key"
        if self.settings.api_keys and not (admin or _matches(key, self.settings.api_keys)):
            return 401, MISSING_KEY, "invalid_api_key"
        return None

    async def _buffered(self, receive):
        """A chunked body (no Content-Length) is read up to the limit, then replayed to the app."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return receive, None  # the client left; the app will see it
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.settings.max_body_bytes:
                return receive, (413, f"The request body exceeds {self.settings.max_body_bytes} bytes.",
                                 "request_too_large")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return replay, None

    @staticmethod
    async def _error(send, path: str, status: int, message: str, code: str):
        body = json.dumps(APIError(message, code=code, status=status).body(path)).encode()
        await Guard._plain(send, body, "application/json", status)

    @staticmethod
    async def _plain(send, body: bytes, content_type: str, status: int = 200):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
