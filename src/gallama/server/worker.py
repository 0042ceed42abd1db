"""The worker process: one model instance behind the single-model app, on a free port (of localhost, or of
its node's cluster address when a Ray actor starts it: gallama.router.ray_host).

The front starts it as `python -m gallama worker SPEC_JSON --handover-fd N` (N: its end of the
channel that carries client sockets, see gallama.server.handover) and reads one JSON line from
its stdout: `{"port": ..., ...facts}` once the model serves, or `{"error": ...}`.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import sys
import threading
import time

import uvicorn

from gallama.config import ModelSpec
from gallama.protocol.errors import ServerShuttingDown
from gallama.serving.loading import load_served
from gallama.serving.registry import ModelRegistry
from gallama.server.app import create_app
from gallama.server.cluster_secret import SECRET_ENV, RequireClusterSecret
from gallama.server.graceful import GracefulServer
from gallama.server.responses_store import ResponsesStore
from gallama.server.handover import DropUnclaimedSockets, HandoverInbox, connect_channel

log = logging.getLogger("gallama.worker")


def _exit_with_parent(parent: int) -> None:
    """A worker never outlives its front, even one killed without a chance to clean up."""
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)


def _report(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run_worker(spec_json: str, log_level: str = "warning", handover_fd: int | None = None,
               responses_store: str | None = None, host: str = "127.0.0.1", handover_socket: str | None = None) -> int:
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    secret = os.environ.pop(SECRET_ENV, None)  # a Ray-placed worker, reachable from the cluster's network
    spec = ModelSpec.model_validate_json(spec_json)
    started = time.perf_counter()
    try:
        served = load_served(spec)
    except Exception as error:  # noqa: BLE001 (any load failure is this worker's answer to the front)
        _report({"error": f"cannot load {spec.model_id}: {error}"})
        return 1
    registry = ModelRegistry()
    registry.add(served)
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets of that proto, and without it
    # Nagle holds the response body behind its headers for a delayed ACK (40 ms a request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((host, 0))
    sock.listen(512)  # connections queue from here on, before uvicorn accepts them
    if handover_socket and secret:  # a Ray actor's worker on the front's node: connected before it reports
        channel = connect_channel(handover_socket, secret)
        handover_fd = channel.detach() if channel is not None else None
    _report({
        "port": sock.getsockname()[1],
        "pid": os.getpid(),
        "load_s": round(time.perf_counter() - started, 2),
        "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        **served.engine.facts().as_dict(),
    })
    app = create_app(registry, ResponsesStore(responses_store) if responses_store else None)
    if handover_fd is not None:  # the front hands streamed requests' sockets over this channel
        app.state.handover = HandoverInbox(socket.socket(fileno=handover_fd))
        app.add_middleware(DropUnclaimedSockets, inbox=app.state.handover)
    if secret:
        app.add_middleware(RequireClusterSecret, secret=secret)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off", timeout_graceful_shutdown=5)

    async def end_generations() -> None:
        # The front waits out its grace period before it stops a worker: whatever still runs ends now,
        # with an error event, so that every response completes before the model is unloaded.
        for model in registry.all():
            if hasattr(model, "end_generations"):
                model.end_generations(ServerShuttingDown())

    try:
        GracefulServer(config, end_generations).run(sockets=[sock])
    finally:
        registry.close()
    return 0
