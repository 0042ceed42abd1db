"""Relaying one request to a worker: SSE passed through as it arrives, failures as 503 error objects.

A client that goes away closes the upstream request, so the worker cancels its sequence.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gallama.protocol.errors import RESPONSES_PATH, ServiceUnavailable
from gallama.protocol.responses_lifecycle import ResponseIdentity, lost_stream_events
from gallama.protocol.sse_frames import error_frames, named_event
from gallama.router.handover import TRANSPORT
from gallama.router.instances import Instance
from gallama.server.handover import HANDED_OVER_STATUS, HANDED_OVER_TYPE, HANDOVER_HEADER, LAST_CHUNK, chunk

# Per-connection headers that the front's own server sets again.
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}


def worker_lost(instance: Instance, error: Exception) -> ServiceUnavailable:
    """The error for a request whose worker failed; the instance gets no more requests until it answers again."""
    instance.suspect()
    return ServiceUnavailable(
        f"The worker serving '{instance.spec.model_name}' failed during this request ({type(error).__name__}); "
        "it is being restarted.", code="worker_unavailable", headers={"Retry-After": "2"},
    )


@dataclass
class StreamEnd:
    """What the front needs to end a stream whose worker failed as the API ends its streams: the path, and for
    a Responses stream the response's identity (the front chose it) and a sequence number no event reached."""

    path: str
    model: str
    response: ResponseIdentity | None = None
    sequence: int = 0

    def lost(self, instance: Instance, error: Exception) -> bytes:
        failure = worker_lost(instance, error)
        if self.response is None:
            return error_frames(self.path, failure).encode()
        events = lost_stream_events(self.response, self.model, self.sequence, failure)
        return "".join(named_event(event) for event in events).encode()


def _headers(upstream: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}


class _Relay(StreamingResponse):
    """An SSE response read from the worker; whatever ends it (done, worker lost, client gone) closes upstream."""

    def __init__(self, upstream: httpx.Response, instance: Instance, end: StreamEnd):
        self.upstream = upstream
        self.instance = instance
        self.end = end
        super().__init__(self._chunks(), status_code=upstream.status_code, headers=_headers(upstream))

    async def _chunks(self):
        tail = b""
        try:
            async for data in self.upstream.aiter_raw():
                if self.end.response is not None:  # count the events that went by: each ends with a blank line
                    self.end.sequence += (tail + data).count(b"\n\n")
                    tail = data[-1:]
                yield data
        except httpx.HTTPError as error:  # headers are sent: the failure travels as an event
            yield self.end.lost(self.instance, error)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.instance.outstanding -= 1
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()


class HandedOver(Response):
    """The worker writes this stream to the client; the front waits for its end, then closes the connection."""

    def __init__(self, upstream: httpx.Response, instance: Instance, end: StreamEnd):
        self.upstream = upstream
        self.instance = instance
        self.end = end
        self.background = None

    async def _follow(self) -> None:
        """Reads the worker's answer to the end: sequence-number reservations (one a line), then the outcome."""
        pending = b""
        async for data in self.upstream.aiter_raw():
            *lines, pending = (pending + data).split(b"\n")
            reserved = [int(line) for line in lines if line.isdigit()]
            if reserved:
                self.end.sequence = reserved[-1]

    async def __call__(self, scope, receive, send) -> None:
        transport: asyncio.Transport = scope["extensions"][TRANSPORT]
        reading = asyncio.ensure_future(self._follow())
        gone = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait((reading, gone), return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():  # closing the worker's request tells it the client left
                reading.cancel()
            elif isinstance(error := reading.exception(), httpx.HTTPError) and not transport.is_closing():
                # The worker died mid-stream: end the client's stream as a relayed one ends.
                transport.write(chunk(self.end.lost(self.instance, error)) + LAST_CHUNK)
        finally:
            gone.cancel()
            self.instance.outstanding -= 1
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()
            scope[HANDED_OVER_STATUS] = 200
            transport.close()  # the response said `Connection: close`
        # uvicorn sends nothing on a connection it knows is gone.
        await _until_disconnect(receive)


async def _until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def forward(
    client: httpx.AsyncClient, instance: Instance, request: Request, body: bytes, handover: bool = False
) -> Response:
    """Relays the request; with `handover`, offers the worker the client's socket to stream to itself."""
    instance.outstanding += 1
    instance.requests += 1
    headers = {"content-type": request.headers.get("content-type", "application/json"), **instance.headers}
    if "x-request-id" in request.headers:  # a handed-over stream's response carries it from the worker
        headers["x-request-id"] = request.headers["x-request-id"]
    end = StreamEnd(request.url.path, instance.spec.model_name)
    if request.url.path == RESPONSES_PATH:
        end.response = ResponseIdentity.new()
        headers.update(end.response.headers())
    token = instance.channel.offer(request) if handover and instance.channel is not None else None
    if token is not None:
        headers[HANDOVER_HEADER] = token
    upstream_request = client.build_request(request.method, instance.base_url + request.url.path, content=body,
                                            headers=headers)
    released_by_response = False  # a relayed or handed-over stream gives the instance back when it ends
    exchange = asyncio.ensure_future(client.send(upstream_request, stream=True))
    gone = asyncio.ensure_future(_until_disconnect(request.receive))
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
            released_by_response = True
            return _Relay(upstream, instance, end)
        if upstream.headers.get("content-type") == HANDED_OVER_TYPE:
            released_by_response = True
            return HandedOver(upstream, instance, end)
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
        if not released_by_response:
            instance.outstanding -= 1
