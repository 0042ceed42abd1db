"""A request that finds its worker gone takes the instance out of routing at once; a probe puts it back if the
worker answers after all (the watcher restarts one that is really gone). Real sockets, no worker process."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading

from gallama.config import ModelSpec
from gallama.router import instances
from gallama.router.instances import Instance


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def _ready_instance(port: int) -> Instance:
    instance = Instance(ModelSpec(model_id="m"), 1)
    instance.port, instance.status = port, "ready"
    return instance


async def test_a_suspected_worker_that_answers_is_routed_to_again(monkeypatch):
    monkeypatch.setattr(instances, "PROBE_INTERVAL_S", 0.05)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        instance = _ready_instance(server.server_address[1])
        instance.suspect()
        assert instance.status == "restarting"  # no request is routed there meanwhile
        await asyncio.wait_for(instance._probe, 5)
        assert instance.status == "ready"
    finally:
        server.shutdown()


async def test_a_suspected_worker_that_is_gone_stays_out_of_routing(monkeypatch):
    monkeypatch.setattr(instances, "PROBE_INTERVAL_S", 0.01)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    instance = _ready_instance(port)
    instance.suspect()
    await asyncio.wait_for(instance._probe, 5)
    assert instance.status == "restarting"
    instance.suspect()  # a second failed request while it is out starts no second probe
    assert instance._probe.done()
