"""`serve --ray`: model instances placed on a Ray cluster, each a Ray actor running the usual worker.

Ray places each actor on a node with the resources its spec asks for (`threads` as CPUs, `gpus` as
GPUs of one node, `ray_resources` as custom resources), and restarts it (elsewhere if its node is
gone) when it dies. The front routes to its worker over the cluster's network as to a local one,
with the cluster secret in every request (gallama.server.cluster_secret). A worker on the front's
own node takes streams over as a local one does (its channel connects to a HandoverListener); the
front relays the streams of the others (a socket cannot be handed to another node).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from gallama.bundled_models import DEFAULT_CHAT_MODEL
from gallama.config import ModelSpec, spec_from_dict
from gallama.router.handover import HandoverListener
from gallama.router.instances import STOP_GRACE_S, Instance, WorkerFailed, describe_load
from gallama.router.ray_host import WorkerHost
from gallama.server.cluster_secret import SECRET_HEADER

log = logging.getLogger("gallama")

REACH_TIMEOUT_S = 5.0
UNAVAILABLE_RETRY_S = 0.5  # while Ray restarts an actor, calls to it fail at once: ask again after this


def default_name(model_id: str) -> str:
    """The model name a spec without one gets, as resolve() gives it, without looking at the file."""
    if model_id.lower() == DEFAULT_CHAT_MODEL.name.lower():
        return DEFAULT_CHAT_MODEL.name
    path = Path(model_id)
    return path.stem if path.suffix == ".gguf" else path.name


def front_spec(spec: ModelSpec, config: dict[str, ModelSpec]) -> ModelSpec:
    """The spec as the front hands it to the node that resolves it (gallama.router.ray_host): no file is looked
    at here. Its config entry is merged in (the node has not this config), paths are made absolute (the node
    runs in another folder), and model_name is filled in (the front routes by it from the start)."""
    chosen = spec.model_dump(exclude_unset=True, exclude_none=True)
    entry = spec.model_id if spec.model_id in config else None
    if entry:
        chosen = {**config[entry].model_dump(exclude_unset=True, exclude_none=True),
                  **{key: value for key, value in chosen.items() if key != "model_id"}}
    if chosen.get("draft_model_id") in config:
        chosen["draft_model_id"] = config[chosen["draft_model_id"]].model_id
    for key in ("model_id", "draft_model_id", "chat_template"):
        if chosen.get(key) and chosen[key].lower() != DEFAULT_CHAT_MODEL.name.lower():
            chosen[key] = str(Path(chosen[key]).expanduser().absolute())
    chosen.setdefault("model_name", entry or default_name(chosen["model_id"]))
    return spec_from_dict(chosen, where=chosen["model_name"])


def actor_options(spec: ModelSpec) -> dict:
    """The resources Ray reserves for an instance: its threads as CPUs, its GPUs on one node, its custom resources."""
    gpus = [gb for gb in spec.gpus or [] if gb]
    # max_restarts=-1: Ray restarts a dead actor for as long as the front runs; max_task_retries=0: a call
    # that a death cut short fails, and the front decides what to do.
    options = {"num_cpus": spec.threads or 1, "max_restarts": -1, "max_task_retries": 0}
    if gpus:
        options["num_gpus"] = len(gpus)
    if spec.ray_resources:
        options["resources"] = dict(spec.ray_resources)
    return options


def node_spec(spec: ModelSpec) -> ModelSpec:
    """The spec as the node's worker reads it: Ray shows the actor only the GPUs it reserved, numbered from 0."""
    if not spec.gpus:
        return spec
    return spec.model_copy(update={"gpus": [gb for gb in spec.gpus if gb]})


def unplaceable(options: dict, nodes: list[dict]) -> str | None:
    """Why no node of the cluster can ever hold an actor with these options (None when one can)."""
    wanted = {"CPU": options["num_cpus"], "GPU": options.get("num_gpus", 0), **options.get("resources", {})}
    wanted = {name: amount for name, amount in wanted.items() if amount}
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive")]
    if any(all(resources.get(name, 0) >= amount for name, amount in wanted.items()) for resources in alive):
        return None
    asked = ", ".join(f"{name}:{amount:g}" for name, amount in wanted.items())
    have = "; ".join(", ".join(f"{name}:{amount:g}" for name, amount in sorted(resources.items())
                               if not name.startswith("node:") and "memory" not in name) for resources in alive)
    return f"no node of the Ray cluster has {asked} (its nodes have: {have or 'none'})"


def _check_reachable(address: str) -> None:
    """ray.init retries an address where nothing listens for minutes: say so at once instead."""
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not port.isdigit():
        return  # Ray finds (or fails to find) these itself, quickly
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as error:
        raise ConnectionError(f"nothing answers at {address} ({error.strerror or error})") from None


class RayCluster:
    """The front's connection to the cluster, and the secret its workers require."""

    def __init__(self, address: str, defaults: dict[str, Any] | None = None):
        _check_reachable(address)
        self.defaults = defaults or {}  # the serve flags: each node resolves its specs with them
        # log_to_driver: the workers' log lines (a refused request, a load failure) reach the front's log.
        ray.init(address=address, namespace="gallama", logging_level=logging.WARNING, log_to_driver=True)
        self.address = address
        self.node_id = ray.get_runtime_context().get_node_id()  # the front's node: its workers take streams over
        self.secret = secrets.token_urlsafe(32)
        self.host_class = ray.remote(WorkerHost)

    def prepare(self, spec: ModelSpec, config: dict[str, ModelSpec]) -> ModelSpec:
        """What `resolve` is to a local instance: the nodes resolve, the front only prepares."""
        return front_spec(spec, config)

    def instance(self, spec: ModelSpec, index: int, log_level: str, responses_store: str | None) -> "RayInstance":
        return RayInstance(spec, index, self, log_level, responses_store)

    def close(self) -> None:
        ray.shutdown()


class RayInstance(Instance):
    """An instance whose worker runs under a Ray actor, on whichever node Ray placed it."""

    def __init__(self, spec: ModelSpec, index: int, cluster: RayCluster, log_level: str, responses_store: str | None):
        super().__init__(spec, index)
        self.given = spec  # as the front prepared it: each (re)start resolves it again, on whichever node Ray picks
        self.cluster = cluster
        self.log_level = log_level
        self.responses_store = responses_store
        self.headers = {SECRET_HEADER: cluster.secret}
        self.node = {"id": None, "address": None}
        self.actor = None

    @property
    def location(self) -> str:
        return f"Ray node {self.node['address']} ({(self.node['id'] or '')[:12]}), port {self.port}"

    async def start(self) -> None:
        if self.actor is None:
            options = actor_options(self.given)
            reason = unplaceable(options, await asyncio.to_thread(ray.nodes))
            if reason:
                raise WorkerFailed(reason)
            self.actor = self.cluster.host_class.options(**options).remote()
        listener = HandoverListener()
        try:
            facts = await self._start_worker(listener.name)
            if self.channel is not None:  # a restart: the old worker's channel went with it
                self.channel.close()
            self.channel = listener.accept(self.cluster.secret)  # None off the front's node: streams are relayed
        finally:
            listener.close()
        self.host, self.port, self.node, self.facts = facts["host"], facts["port"], facts["node"], facts
        self.spec = ModelSpec.model_validate_json(facts["spec"])  # as resolved on the node: its files, its backend
        self.status = "ready"
        log.info(describe_load(self))
        self._watcher = asyncio.create_task(self._watch())

    async def _start_worker(self, handover_socket: str) -> dict:
        spec_json = node_spec(self.given).model_dump_json()
        while True:
            try:
                facts = await self.actor.start.remote(spec_json, self.cluster.defaults, self.cluster.secret,
                                                      self.log_level, self.responses_store, self.cluster.node_id,
                                                      handover_socket)
                break
            except ActorUnavailableError:  # Ray is restarting the actor (its node died): it takes calls again soon
                await asyncio.sleep(UNAVAILABLE_RETRY_S)
            except RayActorError as error:
                raise WorkerFailed(f"its Ray actor died: {error}") from None
        if "error" in facts:
            raise WorkerFailed(facts["error"])
        return facts

    async def _watch(self) -> None:
        try:
            code = await self.actor.wait.remote()
            what = f"its worker exited with code {code}"
        except RayActorError as error:  # ActorUnavailableError too: the actor or its node died
            what = f"its Ray actor was lost ({type(error).__name__})"
        if self._stopping:
            return
        self.status = "restarting"  # no request goes there from now on
        log.warning("%s #%d on %s: %s; restarting it", self.spec.model_name, self.index, self.location, what)
        await self._restart()

    async def stop(self) -> None:
        """Stops the worker, then releases the actor and its resources."""
        self._stop_watching()
        if self.actor is None:
            return
        try:
            await asyncio.wait_for(self.actor.stop.remote(STOP_GRACE_S), STOP_GRACE_S + 5)
        except (asyncio.TimeoutError, RayActorError):
            pass  # the actor is gone or unreachable: killing it below is all there is left to do
        ray.kill(self.actor, no_restart=True)
        self.actor = None
        if self.channel is not None:
            self.channel.close()
