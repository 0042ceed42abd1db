"""Relaying one request to a worker: SSE passed through as it arrives, failures as 503 error objects.

A client that goes away closes the upstream request, so the worker cancels its sequence.
"""

from __future__ import annotations

import asyncio
import json

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gallama.protocol.errors import ServiceUnavailable
from gallama.router.instances import WorkerInstance

# Per-connection headers that the front's own server sets again.
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}


def worker_lost(instance: WorkerInstance, error: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The worker serving '{instance.spec.model_name}' failed during this request ({type(error).__name__}); "
        "it is being restarted.", code="worker_unavailable", headers={"Retry-After": "2"},
    )


def _headers(upstream: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}


class _Relay(StreamingResponse):
    """An SSE response read from the worker; whatever ends it (done, worker lost, client gone) closes upstream."""

    def __init__(self, upstream: httpx.Response, instance: WorkerInstance):
        self.upstream = upstream
        self.instance = instance
        super().__init__(self._chunks(), status_code=upstream.status_code, headers=_headers(upstream))

    async def _chunks(self):
        try:
            async for chunk in self.upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as error:
            # Headers are sent: the failure travels as an error event, as OpenAI's streams do.
            yield f"data: {json.dumps(worker_lost(self.instance, error).body())}\n\ndata: [DONE]\n\n".encode()

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.instance.outstanding -= 1
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def forward(client: httpx.AsyncClient, instance: WorkerInstance, request: Request, body: bytes) -> Response:
    instance.outstanding += 1
    instance.requests += 1
    upstream_request = client.build_request(
        request.method, instance.base_url + request.url.path, content=body,
        headers={"content-type": request.headers.get("content-type", "application/json")},
    )
    handed_over = False  # a relayed stream gives the instance back when it ends
    exchange = asyncio.ensure_future(client.send(upstream_request, stream=True))
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait((exchange, gone), return_when=asyncio.FIRST_COMPLETED)
        if not exchange.done():  # the client left before the worker answered
            exchange.cancel()
            return Response(status_code=499)
        try:
            upstream = exchange.result()
        except httpx.HTTPError as error:
            raise worker_lost(instance, error) from None
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            handed_over = True
            return _Relay(upstream, instance)
        reading = asyncio.ensure_future(upstream.aread())
        await asyncio.wait((reading, gone), return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():
            reading.cancel()
            await upstream.aclose()
            return Response(status_code=499)
        try:
            content = reading.result()
        except httpx.HTTPError as error:
            raise worker_lost(instance, error) from None
        finally:
            await upstream.aclose()
        return Response(content, status_code=upstream.status_code, headers=_headers(upstream))
    finally:
        gone.cancel()
        if not handed_over:
            instance.outstanding -= 1
