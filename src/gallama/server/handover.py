"""A streamed response written straight to the client's connection, which the front hands over.

The front relays every other response. Relaying a stream wakes its event loop once per token, on the
cores that decode (measured: 4% of single-stream and 9% of 8-stream decode speed). So for a streamed
request the front sends the client's socket over a Unix channel (SCM_RIGHTS) with a token, and names
the token in the request's HANDOVER_HEADER. The worker writes the SSE response to that socket itself,
with `Connection: close` (the connection is the front's to keep, not the worker's), and answers the
front's own request with HANDED_OVER_TYPE and, once the stream is over, its outcome (a numbered stream
sends sequence-number reservations before it, one line each). That request stays open meanwhile: its end is how a client's disconnect reaches the worker, and its breaking is how
the front learns that the worker died mid-stream. Without a socket (none sent, or not arrived), the
stream goes to the front as usual, which relays it.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from contextlib import aclosing
from typing import AsyncIterator, Callable

import anyio
from starlette.requests import Request
from starlette.responses import Response

HANDOVER_HEADER = "x-gallama-handover"
HANDED_OVER_TYPE = "application/x-gallama-handover"
HANDED_OVER_STATUS = "gallama.handed_over_status"  # scope key: the status the client got, for the front's log
LAST_CHUNK = b"0\r\n\r\n"
UNCLAIMED_S = 30.0  # a socket whose request never reached the app (its worker connection failed)
# A stream whose events are numbered (Responses) tells the front, every so many events, a number no event has
# reached yet: the front numbers the failure events it writes if the worker dies, without a wake-up per token.
RESERVED_EVENTS = 32


def chunk(data: bytes) -> bytes:
    """One chunk of HTTP/1.1's chunked transfer coding."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class HandoverInbox:
    """Client sockets the front has sent, by token, until the request naming them takes or drops them.

    The front sends a socket before the request that names it, so the channel is read when a request
    asks: no reader needs to run on the loop.
    """

    def __init__(self, channel: socket.socket):
        channel.setblocking(False)
        self.channel = channel
        self.sockets: dict[str, tuple[socket.socket, float]] = {}

    def _drain(self) -> None:
        now = time.monotonic()
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, 64, 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the front is gone; so is this worker, shortly
                break
            if not data and not fds:
                break
            for fd in fds[1:]:  # one socket per message; anything more is not ours to keep
                socket.close(fd)
            if fds:
                self.sockets[data.decode(errors="replace")] = (socket.socket(fileno=fds[0]), now)
        for token, (client, arrived) in list(self.sockets.items()):
            if now - arrived > UNCLAIMED_S:
                del self.sockets[token]
                client.close()

    def take(self, token: str) -> socket.socket | None:
        self._drain()
        entry = self.sockets.pop(token, None)
        return entry[0] if entry else None

    def drop(self, token: str) -> None:
        client = self.take(token)
        if client is not None:
            client.close()


def connect_channel(name: str, secret: str) -> socket.socket | None:
    """Connects to the front's HandoverListener (a Ray actor's worker on the front's node), the secret first."""
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        channel.connect("\0" + name)
        channel.send(secret.encode())
    except OSError:  # not the front's machine after all: the front relays this worker's streams
        channel.close()
        return None
    return channel


class DropUnclaimedSockets:
    """A request that named a socket and did not stream to it (an error, say) closes the worker's copy at its end:
    a copy left open would hold the client's connection open after the front closes it."""

    def __init__(self, app, inbox: HandoverInbox):
        self.app, self.inbox = app, inbox

    async def __call__(self, scope, receive, send):
        token = None
        if scope["type"] == "http":
            token = next((v.decode() for k, v in scope["headers"] if k == HANDOVER_HEADER.encode()), None)
        try:
            await self.app(scope, receive, send)
        finally:
            if token is not None:
                self.inbox.drop(token)


def _head(headers: dict[str, str]) -> bytes:
    lines = ["HTTP/1.1 200 OK", *(f"{name}: {value}" for name, value in headers.items()),
             f"date: {email.utils.formatdate(usegmt=True)}", "connection: close", "transfer-encoding: chunked"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HandedOverStream(Response):
    """Writes the frames to the client's socket; the front's request gets the outcome when they end."""

    def __init__(self, client: socket.socket, frames: AsyncIterator[str], headers: dict[str, str],
                 stop: Callable[[], None], numbered: bool = False):
        self.client = client
        self.frames = frames
        self.stop = stop  # ends the generation, also when the frames were never read
        self.numbered = numbered  # the events carry sequence numbers: report reservations to the front
        self.head = _head(headers)
        self.started = False
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        loop = asyncio.get_running_loop()
        self.client.setblocking(False)
        outcome = b"complete"
        try:
            async with anyio.create_task_group() as group:

                async def front_gone() -> None:  # the client left (the front saw it) or the front died
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(front_gone)
                try:
                    # The head first: once the front hears that the stream is handed over, it is the client's.
                    await loop.sock_sendall(self.client, self.head)
                    await self._start(send)
                    sent = reserved = 0
                    async with aclosing(self.frames) as frames:
                        async for frame in frames:
                            sent += frame.count("\n\n")  # one per event
                            if self.numbered and sent > reserved:
                                reserved = sent + RESERVED_EVENTS
                                await send({"type": "http.response.body", "body": b"%d\n" % reserved,
                                            "more_body": True})
                            await loop.sock_sendall(self.client, chunk(frame.encode()))
                    await loop.sock_sendall(self.client, LAST_CHUNK)
                except OSError:
                    outcome = b"client gone"
                group.cancel_scope.cancel()
        finally:
            self.stop()
            self.client.close()
        if not self.started:  # the client left before the head went out; a front that left drops it all
            await self._start(send)
        await send({"type": "http.response.body", "body": outcome})

    async def _start(self, send) -> None:
        self.started = True
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", HANDED_OVER_TYPE.encode())]})


def handed_over(
    request: Request, frames: AsyncIterator[str], headers: dict[str, str], stop: Callable[[], None],
    numbered: bool = False,
) -> HandedOverStream | None:
    """The stream as written to the client's own socket, when the front sent one for this request."""
    token = request.headers.get(HANDOVER_HEADER)
    inbox: HandoverInbox | None = getattr(request.app.state, "handover", None)
    client = inbox.take(token) if token and inbox else None
    if client is None:
        return None
    request_id = request.headers.get("x-request-id")
    return HandedOverStream(client, frames, {**headers, **({"x-request-id": request_id} if request_id else {})}, stop,
                            numbered)
