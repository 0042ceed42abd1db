"""The front's half of a stream handover (the why and the protocol: gallama.server.handover).

The front offers the client's socket to the worker before forwarding a streamed request; if the
worker answers HANDED_OVER_TYPE, the worker writes the stream and the front only waits for its end.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from typing import Callable

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gallama.protocol.errors import ServiceUnavailable
from gallama.server.handover import HANDED_OVER_STATUS, LAST_CHUNK, chunk

TRANSPORT = "gallama.transport"  # scope extension: the client connection's transport


class HandoverProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the connection's transport in each request's scope."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {TRANSPORT: self.transport}


class HandoverChannel:
    """A Unix socket pair to one worker process, which carries client sockets with a token each."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ours.setblocking(False)

    @property
    def worker_fd(self) -> int:
        return self.theirs.fileno()

    def spawned(self) -> None:
        self.theirs.close()  # the worker holds its own copy

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()

    def offer(self, request: Request) -> str | None:
        """Sends the request's client socket; the token names it in the forwarded request."""
        transport: asyncio.Transport | None = request.scope.get("extensions", {}).get(TRANSPORT)
        client = transport.get_extra_info("socket") if transport is not None else None
        if client is None:
            return None
        token = secrets.token_hex(8)
        try:
            socket.send_fds(self.ours, [token.encode()], [client.fileno()])
        except OSError:  # the channel is full or the worker gone: this stream is relayed
            return None
        return token


def wants_handover(request: Request, payload: object) -> bool:
    # Middleware that adds response headers (CORS answers requests with an Origin) needs the front to send them.
    return isinstance(payload, dict) and payload.get("stream") is True and "origin" not in request.headers


class HandedOver(Response):
    """The worker writes this stream to the client; the front waits for its end, then closes the connection."""

    def __init__(self, upstream: httpx.Response, on_end: Callable[[], None],
                 lost: Callable[[Exception], ServiceUnavailable]):
        self.upstream = upstream
        self.on_end = on_end
        self.lost = lost
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        transport: asyncio.Transport = scope["extensions"][TRANSPORT]

        async def client_gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        reading = asyncio.ensure_future(self.upstream.aread())
        gone = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait((reading, gone), return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():  # closing the worker's request tells it the client left
                reading.cancel()
            elif isinstance(error := reading.exception(), httpx.HTTPError) and not transport.is_closing():
                # The worker died mid-stream: end the client's stream as a relayed one ends.
                event = f"data: {json.dumps(self.lost(error).body())}\n\ndata: [DONE]\n\n".encode()
                transport.write(chunk(event) + LAST_CHUNK)
        finally:
            gone.cancel()
            self.on_end()
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()
            scope[HANDED_OVER_STATUS] = 200
            transport.close()  # the response said `Connection: close`
        # uvicorn sends nothing on a connection it knows is gone.
        while (await receive())["type"] != "http.disconnect":
            pass
