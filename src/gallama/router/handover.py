"""The front's half of a stream handover (the why and the protocol: gallama.server.handover).

The front offers the client's socket to the worker before forwarding a streamed request; if the
worker answers HANDED_OVER_TYPE, the worker writes the stream and the front only waits for its end
(`router.proxy.HandedOver`).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import socket

from starlette.requests import Request
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


TRANSPORT = "gallama.transport"  # scope extension: the client connection's transport


class HandoverProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the connection's transport in each request's scope."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {TRANSPORT: self.transport}


class HandoverChannel:
    """A Unix socket to one worker process, which carries client sockets with a token each: one end of a pair
    whose other end the worker the front spawns inherits, or a connection a worker on this machine made."""

    def __init__(self, connected: socket.socket | None = None) -> None:
        if connected is None:
            self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        else:
            self.ours, self.theirs = connected, None
        self.ours.setblocking(False)

    @property
    def worker_fd(self) -> int:
        return self.theirs.fileno()

    def spawned(self) -> None:
        self.theirs.close()  # the worker holds its own copy

    def close(self) -> None:
        self.ours.close()
        if self.theirs is not None:
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


class HandoverListener:
    """Where a worker on the front's machine that the front did not spawn (a Ray actor's) connects its channel:
    an abstract Unix socket whose name the worker is given, and whose first message must be the secret."""

    def __init__(self) -> None:
        self.name = f"gallama-handover-{secrets.token_hex(8)}"  # abstract: no file, gone with the socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind("\0" + self.name)
        self.sock.listen(1)
        self.sock.setblocking(False)

    def accept(self, secret: str) -> HandoverChannel | None:
        """The channel of the worker that connected (it did before it reported ready), if it knew the secret."""
        try:
            connection, _ = self.sock.accept()
            given = connection.recv(len(secret) + 1, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):  # no worker connected: its streams are relayed
            return None
        if not hmac.compare_digest(given, secret.encode()):
            connection.close()
            return None
        return HandoverChannel(connection)

    def close(self) -> None:
        self.sock.close()


def wants_handover(request: Request, payload: object) -> bool:
    # Middleware that adds response headers (CORS answers requests with an Origin) needs the front to send them.
    return isinstance(payload, dict) and payload.get("stream") is True and "origin" not in request.headers
