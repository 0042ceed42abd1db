"""The Ray actor that runs one model instance's worker process on the node Ray placed it on.

Each instance of `serve --ray` is one such actor (gallama.router.ray_instances makes them, with the
resources of its spec). The actor resolves the spec on its node, where the model files are read,
starts `python -m gallama worker` bound to the node's cluster address with the front's secret, and
reports the worker's port and facts to the front. The worker exits with the actor (it watches its
parent), so a dead actor or node takes its worker along; Ray restarts the actor and the front asks
it to start the worker again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import ray

from gallama.bundled_models import DEFAULT_CHAT_MODEL
from gallama.config import ModelSpec, SpecError, resolve
from gallama.router.instances import launch_worker
from gallama.server.cluster_secret import SECRET_ENV

log = logging.getLogger("gallama")


def missing_files(spec: ModelSpec) -> list[str]:
    """The files a spec names that are not on this node (the bundled model is wherever gallama is)."""
    named = [spec.model_id, spec.draft_model_id, spec.chat_template]
    return [path for path in named
            if path and path.lower() != DEFAULT_CHAT_MODEL.name.lower() and not Path(path).expanduser().exists()]


class WorkerHost:
    """One worker process on this node: started on the front's request, watched, stopped."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self._drainer: asyncio.Task | None = None

    async def start(self, spec_json: str, defaults: dict, secret: str, log_level: str, responses_store: str | None,
                    front_node: str, handover_socket: str) -> dict:
        """The worker's facts once its model serves (its port, node and resolved spec), or {"error": reason}.

        On the front's own node, the worker connects to `handover_socket` to take streams over from the front.
        """
        await self.stop()  # a second start replaces the worker
        address = ray.util.get_node_ip_address()
        node = {"id": ray.get_runtime_context().get_node_id(), "address": address}
        where = f"on the Ray node {address} ({node['id'][:12]})"
        spec = ModelSpec.model_validate_json(spec_json)
        if missing := missing_files(spec):
            return {"error": f"{', '.join(missing)}: not found {where}, which reads this instance's files; put them "
                             "there, or pin the model to a node that has them with ray_resources="}
        try:
            spec = resolve(spec, {}, defaults)  # as the front resolves a local instance's
        except SpecError as error:
            return {"error": f"{where}: {error}"}
        # The front's SQLite file of stored responses, where this node shares the front's file system.
        store = ("--responses-store", responses_store) if responses_store and Path(responses_store).exists() else ()
        handover = ("--handover-socket", handover_socket) if node["id"] == front_node else ()
        self.process, message = await launch_worker(spec, log_level, "--host", address, *store, *handover,
                                                    env={**os.environ, SECRET_ENV: secret})
        if "error" in message:
            return {"error": f"{where}: {message['error']}"}
        self._drainer = asyncio.create_task(self._drain(self.process))
        return {**message, "host": address, "node": node, "spec": spec.model_dump_json()}

    @staticmethod
    async def _drain(process: asyncio.subprocess.Process) -> None:
        async for line in process.stdout:  # a worker prints nothing after its first line on purpose
            log.debug("worker %s: %s", process.pid, line.decode(errors="replace").rstrip())

    async def wait(self) -> int | None:
        """Returns when the worker exits, with its exit code."""
        return await self.process.wait() if self.process is not None else None

    async def stop(self, grace_s: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()  # the worker ends its generations with an error, then exits
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
