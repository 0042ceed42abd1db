"""A model instance served inside the front's own process: no worker process, no hop to it.

A server of one model needs no process between its clients and its engine: llama-server is one
process too. Measured (docs/benchmarks.md, issue 24), the second Python process cost 60-70 MB of
memory and 4-5 ms of each request's time to first token. What it gave, and this instance does
not: a crash of the engine ends the server (a worker's is restarted), and removing the model
frees what the engine held but not the chat core the process imported. `serve --worker-processes`
keeps every instance in a worker of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time

import httpx
from starlette.responses import Response

from gallama.config import ModelSpec
from gallama.protocol.errors import ServerShuttingDown
from gallama.router.instances import Instance, WorkerFailed, describe_load

log = logging.getLogger("gallama")

STOP_GRACE_S = 5.0  # after the shutdown error, how long responses in flight get to send it


class LocalInstance(Instance):
    def __init__(self, spec: ModelSpec, index: int, responses_store: str | None = None):
        super().__init__(spec, index)
        self.responses_store = responses_store
        self.app = None  # the worker's application over this instance's model, once loaded
        self._registry = None
        self._client: httpx.AsyncClient | None = None  # the front's /health and /metrics questions, asked in process

    @property
    def base_url(self) -> str:
        return "http://in-process"  # what the instance's in-process client asks; no socket

    @property
    def runs_in(self) -> str:
        return f"the server's own process (pid {os.getpid()})"

    def http(self, front_client: httpx.AsyncClient) -> httpx.AsyncClient:
        return self._client

    async def start(self) -> None:
        # The chat core is imported here, not with the front: a server of worker processes does without it.
        from gallama.server.app import create_app
        from gallama.server.responses_store import ResponsesStore
        from gallama.serving.loading import load_served
        from gallama.serving.registry import ModelRegistry

        started = time.perf_counter()
        try:
            served = await asyncio.to_thread(load_served, self.spec)
        except Exception as error:  # noqa: BLE001 (any load failure is the instance's answer)
            raise WorkerFailed(f"cannot load {self.spec.model_id}: {error}") from None
        self._registry = ModelRegistry()
        self._registry.add(served)
        self.app = create_app(self._registry, ResponsesStore(self.responses_store) if self.responses_store else None)
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=self.base_url)
        self.facts = {
            "pid": os.getpid(), "load_s": round(time.perf_counter() - started, 2),
            "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **served.engine.facts().as_dict(),
        }
        self.status = "ready"
        log.info(describe_load(self))

    def answer(self, body: bytes) -> Response:
        """The response to a routed request whose body (the model's name possibly replaced) is `body`."""
        self.outstanding += 1
        self.requests += 1
        return _Answered(self, body)

    async def stop(self) -> None:
        self._stop_watching()
        if self._registry is None:
            return
        # As a worker does at shutdown: whatever still runs ends now with an error event, then the engine goes.
        for model in self._registry.all():
            if hasattr(model, "end_generations"):
                model.end_generations(ServerShuttingDown())
        deadline = time.monotonic() + STOP_GRACE_S
        while self.outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._client.aclose()
        registry, self._registry, self.app = self._registry, None, None
        await asyncio.to_thread(registry.close)


class _Answered(Response):
    """The instance's application answers on the front's connection: the same scope (a copy, which its own
    router fills in), the body read again, then the client's own messages (a disconnect)."""

    def __init__(self, instance: LocalInstance, body: bytes):
        self.instance = instance
        self.body = body
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        pending = [{"type": "http.request", "body": self.body, "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        try:
            await self.instance.app(dict(scope), replay, send)
        finally:
            self.instance.outstanding -= 1
