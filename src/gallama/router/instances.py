"""Worker processes as the front sees them: one per model instance, watched and restarted when they die."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Callable

import httpx

from gallama.config import ModelSpec
from gallama.protocol.responses import model_card
from gallama.router.handover import HandoverChannel

log = logging.getLogger("gallama")

RESTART_DELAYS_S = (0.0, 1.0, 4.0, 15.0)  # then the instance is marked failed
STOP_GRACE_S = 10.0
PROBES, PROBE_INTERVAL_S = 20, 0.5  # how long a worker that failed a request may take to answer again


class WorkerFailed(RuntimeError):
    """The worker could not load its model; the message is the worker's reason."""


def describe_load(instance: "Instance") -> str:
    spec, facts = instance.spec, instance.facts
    parts = [f"{facts['weights_bytes'] / 1e6:.0f} MB weights"] if "weights_bytes" in facts else []
    if "cache_size" in facts:
        parts.append(
            f"{facts['cache_size']}-token KV cache ({facts.get('kv_description', spec.cache_quant or 'FP16')}), "
            f"{spec.max_sequences} sequences of up to {facts['context_length']} tokens"
        )
    parts.append(f"{facts['rss_bytes'] / 1e6:.0f} MB resident")
    threads = spec.threads or os.cpu_count()
    where = f"{facts.get('placement', 'CPU')}, {threads} thread{'s' if threads > 1 else ''}"
    return (
        f"loaded {spec.model_name} #{instance.index} from {spec.model_id} in {instance.runs_in} "
        f"({where}): {', '.join(parts)}, {facts['load_s']:.1f}s"
    )


async def launch_worker(spec: ModelSpec, log_level: str, *args: str, on_spawn: Callable[[], None] = lambda: None,
                        **options) -> tuple[asyncio.subprocess.Process, dict]:
    """Starts `gallama worker` and reads its first line: its port and facts, or {"error": reason}."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gallama", "worker", spec.model_dump_json(), "--log-level", log_level, *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, **options,
    )
    on_spawn()
    line = await process.stdout.readline()
    try:
        message = json.loads(line)
    except ValueError:
        message = {}
    if "port" not in message:
        code = await process.wait()
        return process, {"error": message.get("error") or f"the worker exited with code {code} while loading"}
    return process, message


class Instance:
    """A model instance as the front routes to it; subclasses start, watch and stop what serves it."""

    host = "127.0.0.1"
    headers: dict[str, str] = {}  # sent with every request to the instance
    channel: HandoverChannel | None = None  # carries streamed requests' client sockets to a local worker
    node: dict | None = None  # the Ray node it runs on: {"id", "address"}

    def __init__(self, spec: ModelSpec, index: int):
        self.spec = spec
        self.index = index
        self.status = "loading"  # loading, ready, restarting, failed, stopped
        self.outstanding = 0  # requests routed here and not finished
        self.requests = 0  # requests routed here in all: the tie-breaker that spreads sequential traffic
        self.restarts = 0
        self.port: int | None = None
        self.facts: dict = {}
        self._stopping = False
        self._watcher: asyncio.Task | None = None
        self._probe: asyncio.Task | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def location(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def runs_in(self) -> str:
        """Where the instance runs, in words."""
        return f"worker pid {self.facts.get('pid')} on {self.location}"

    async def start(self) -> None:
        """Starts the worker and returns once its model serves; raises WorkerFailed with its reason."""
        raise NotImplementedError

    async def _restart(self) -> None:
        """After the worker was lost: start it again, after 0, 1, 4 and 15 s, then give up."""
        for delay in RESTART_DELAYS_S:
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self.start()
            except WorkerFailed as error:
                log.error("restarting %s #%d failed: %s", self.spec.model_name, self.index, error)
                continue
            self.restarts += 1
            return
        self.status = "failed"
        log.error("gave up restarting %s #%d", self.spec.model_name, self.index)

    def suspect(self) -> None:
        """A request found the worker gone: route elsewhere now, not once the watcher hears of it (a Ray actor's
        death takes seconds to reach the front); back to ready if the worker answers after all."""
        if self.status == "ready":
            self.status = "restarting"
            self._probe = asyncio.create_task(self._probe_until_back(self.port))

    async def _probe_until_back(self, port: int | None) -> None:
        async with httpx.AsyncClient(headers=self.headers, timeout=2) as client:
            for _ in range(PROBES):
                await asyncio.sleep(PROBE_INTERVAL_S)
                if self.status != "restarting" or self.port != port:
                    return  # the watcher took over
                try:
                    if (await client.get(f"{self.base_url}/health")).status_code == 200:
                        self.status = "ready"
                        return
                except httpx.HTTPError:
                    pass

    def http(self, front_client: httpx.AsyncClient) -> httpx.AsyncClient:
        """The client that reaches the worker's routes: the front's own, for a worker process."""
        return front_client

    async def health(self, client: httpx.AsyncClient) -> dict:
        """The worker's running and queued sequences (zeros when it does not answer)."""
        if self.status != "ready":
            return {"running": 0, "queued": 0}
        try:
            response = await self.http(client).get(f"{self.base_url}/health", headers=self.headers, timeout=2)
            model = response.json()["models"][0]
            return {"running": model["running"], "queued": model["queued"]}
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            return {"running": 0, "queued": 0}

    def describe(self) -> dict:
        described = {
            "index": self.index, "pid": self.facts.get("pid"), "port": self.port, "status": self.status,
            "outstanding": self.outstanding, "requests": self.requests, "restarts": self.restarts,
        }
        return described if self.node is None else {**described, "node": self.node}

    def _stop_watching(self) -> None:
        self._stopping = True
        self.status = "stopped"
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()


class WorkerInstance(Instance):
    """A worker process of this machine, started by the front and handed streams over a Unix socket pair."""

    def __init__(self, spec: ModelSpec, index: int, log_level: str = "warning", responses_store: str | None = None):
        super().__init__(spec, index)
        self.log_level = log_level
        self.responses_store = responses_store  # the SQLite file of /v1/responses, shared with the front
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if self.channel is not None:  # a restart: the old worker's channel went with it
            self.channel.close()
        self.channel = HandoverChannel()
        store = ("--responses-store", self.responses_store) if self.responses_store else ()
        self.process, message = await launch_worker(
            self.spec, self.log_level, "--handover-fd", str(self.channel.worker_fd), *store,
            pass_fds=(self.channel.worker_fd,), on_spawn=self.channel.spawned,
        )
        if "error" in message:
            raise WorkerFailed(message["error"])
        self.port, self.facts = message["port"], message
        self.status = "ready"
        log.info(describe_load(self))
        self._watcher = asyncio.create_task(self._watch(self.process))

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        async for line in process.stdout:  # keep the pipe drained; a worker prints nothing more on purpose
            log.debug("worker %s: %s", process.pid, line.decode(errors="replace").rstrip())
        code = await process.wait()
        if self._stopping:
            return
        self.status = "restarting"
        log.warning("worker pid %s for %s #%d exited with code %s; restarting it", process.pid, self.spec.model_name, self.index, code)
        await self._restart()

    async def stop(self) -> None:
        self._stop_watching()
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        if self.channel is not None:
            self.channel.close()


class ModelGroup:
    """The instances serving one model name; requests go to the ready one with the least outstanding work."""

    def __init__(self, name: str, instances: list[Instance]):
        self.name = name
        self.instances = instances
        self.created = int(time.time())
        self.draining = False

    def pick(self) -> Instance | None:
        ready = [i for i in self.instances if i.status == "ready"]
        return min(ready, key=lambda i: (i.outstanding, i.requests), default=None)

    @property
    def kind(self) -> str:
        """llm or embedding: which endpoints the model serves."""
        return self.instances[0].spec.model_type or "llm"

    @property
    def status(self) -> str:
        if self.draining:
            return "draining"
        states = {i.status for i in self.instances}
        for state in ("ready", "restarting", "loading"):
            if state in states:
                return state
        return "failed"

    @property
    def outstanding(self) -> int:
        return sum(i.outstanding for i in self.instances)

    def card(self) -> dict:
        facts = next((i.facts for i in self.instances if i.facts), {})
        nodes = [i.node for i in self.instances if i.node is not None]
        return model_card(self.name, self.created, facts.get("context_length"), instances=len(self.instances),
                          status=self.status, **({"nodes": nodes} if nodes else {}))

    async def start(self, on_ready: Callable[[], None] = lambda: None) -> None:
        async def start_one(instance: Instance) -> None:
            await instance.start()
            on_ready()

        results = await asyncio.gather(*(start_one(i) for i in self.instances), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]

    async def stop(self) -> None:
        await asyncio.gather(*(i.stop() for i in self.instances))
