"""Stream handover plumbing on real sockets: the channel carries a client socket to its token, and
the worker's copy writes to the same connection the front accepted."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from gallama.router.handover import HandoverChannel, HandoverListener
from gallama.server.handover import HandedOverStream, HandoverInbox, LAST_CHUNK, _head, chunk, connect_channel


class _Scope:
    """What HandoverChannel.offer reads of a request: the connection's transport, by scope extension."""

    def __init__(self, client: socket.socket):
        class Transport:
            def get_extra_info(self, name):
                return client if name == "socket" else None

        self.scope = {"extensions": {"gallama.transport": Transport()}}


def _pair():
    channel = HandoverChannel()
    inbox = HandoverInbox(socket.socket(fileno=socket.dup(channel.worker_fd)))
    channel.spawned()
    return channel, inbox


def test_a_socket_offered_by_the_front_reaches_the_worker_under_its_token():
    channel, inbox = _pair()
    front_side, client_side = socket.socketpair()
    try:
        first = channel.offer(_Scope(front_side))
        second = channel.offer(_Scope(front_side))
        assert first and second and first != second
        assert inbox.take("not-a-token") is None
        taken = inbox.take(second)
        taken.sendall(b"from the worker")
        assert client_side.recv(100) == b"from the worker"
        taken.close()
        front_side.sendall(b"still open")  # the worker's copy closing leaves the front's connection open
        assert client_side.recv(100) == b"still open"
        assert inbox.take(second) is None  # taken once
        inbox.drop(first)
        assert inbox.take(first) is None
    finally:
        for sock in (front_side, client_side):
            sock.close()
        channel.close()


def test_a_dropped_copy_no_longer_holds_the_connection_open():
    channel, inbox = _pair()
    front_side, client_side = socket.socketpair()
    try:
        token = channel.offer(_Scope(front_side))
        inbox.drop(token)
        front_side.close()
        client_side.settimeout(2)
        assert client_side.recv(100) == b""  # end of stream: no copy of the front's side is left
    finally:
        client_side.close()
        channel.close()


def test_without_a_transport_nothing_is_offered():
    channel = HandoverChannel()
    try:
        assert channel.offer(type("R", (), {"scope": {}})()) is None
    finally:
        channel.close()


def test_chunked_framing_and_head():
    assert chunk(b"data: x\n\n") == b"9\r\ndata: x\n\n\r\n"
    assert chunk(b"a" * 255).startswith(b"ff\r\n")
    assert LAST_CHUNK == b"0\r\n\r\n"
    head = _head({"content-type": "text/event-stream", "x-request-id": "r1"}).decode()
    assert head.startswith("HTTP/1.1 200 OK\r\n") and head.endswith("\r\n\r\n")
    lines = head.split("\r\n")
    assert "x-request-id: r1" in lines and "connection: close" in lines and "transfer-encoding: chunked" in lines


def test_a_worker_the_front_did_not_spawn_connects_its_channel_with_the_secret():
    listener = HandoverListener()
    try:
        assert listener.accept("s3cret") is None  # no worker connected yet: its streams would be relayed
        intruder = connect_channel(listener.name, "guess")
        assert listener.accept("s3cret") is None and intruder.recv(10) == b""  # refused: closed at once
        worker_end = connect_channel(listener.name, "s3cret")
        channel = listener.accept("s3cret")
        inbox = HandoverInbox(worker_end)
        front_side, client_side = socket.socketpair()
        token = channel.offer(_Scope(front_side))
        inbox.take(token).sendall(b"handed over")
        assert client_side.recv(100) == b"handed over"
        for sock in (intruder, worker_end, front_side, client_side):
            sock.close()
        channel.close()
    finally:
        listener.close()
    assert connect_channel(listener.name, "s3cret") is None  # the name is gone with the listener


def test_a_numbered_stream_tells_the_front_a_number_above_every_event_sent():
    client, peer = socket.socketpair()
    peer.setblocking(False)
    received = bytearray()
    reservations: list[tuple[int, int]] = []  # (reserved, events the client had by then)

    async def frames():
        for n in range(70):
            yield f"event: e\ndata: {n}\n\n"

    async def send(message):
        with contextlib.suppress(BlockingIOError):
            received.extend(peer.recv(1 << 20))
        if message.get("more_body"):
            reservations.append((int(message["body"]), received.count(b"\n\n")))

    async def receive():
        await asyncio.Event().wait()  # the front stays

    stream = HandedOverStream(client, frames(), {}, stop=lambda: None, numbered=True)
    asyncio.run(stream(None, receive, send))
    received.extend(peer.recv(1 << 20))
    peer.close()
    assert received.count(b"\n\n") == 70
    assert len(reservations) == 3  # one line per RESERVED_EVENTS events, not one per event
    previous = 0
    for reserved, had in reservations:  # never an event numbered at or past the last reservation
        assert had <= previous < reserved
        previous = reserved
    assert 70 <= previous
