"""The `gallama` command: serve, list, download (and the hidden per-model worker)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from gallama.server.guard import GuardSettings
import uvicorn
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from gallama.bundled_models import DEFAULT_CHAT_MODEL
from gallama.config import (
    VALID_KEYS, ModelSpec, SpecError, configured_ray_address, default_embedding_specs, ensure_config, load_config,
    parse_spec_string, resolve,
)
from gallama.protocol.errors import APIError
from gallama.server.graceful import GracefulServer

app = typer.Typer(help="gallama: an OpenAI-compatible local LLM server for agentic work.", no_args_is_help=True)
log = logging.getLogger("gallama")
console = Console(stderr=True)


@app.callback()
def main() -> None:
    """gallama: an OpenAI-compatible local LLM server for agentic work."""


def _setup_logging(level: str) -> None:
    # rich's handler lays out each record as a table: 1.3 ms of the event loop a line (one a request),
    # against 0.01 ms for a plain line; a log going to a file or a pipe gets plain lines.
    if console.is_terminal:
        logging.basicConfig(level=level.upper(), format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    else:
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)-7s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request otherwise


def _cli_specs(model: Path | None, model_name: str | None, ids: list[str]) -> list[ModelSpec]:
    specs = [parse_spec_string(text) for text in ids]
    if model is not None:
        specs.insert(0, ModelSpec(model_id=str(model), model_name=model_name))
    elif not specs:
        specs.append(ModelSpec(model_id=DEFAULT_CHAT_MODEL.name, model_name=model_name))
        specs.extend(default_embedding_specs())  # all-MiniLM-L6-v2 beside it, when the embedding extra is installed
    return specs


async def _serve(pool, groups: dict[str, list[ModelSpec]], server_config: uvicorn.Config, shutdown_grace: float) -> int:
    try:
        with Progress(SpinnerColumn(), TextColumn("loading {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            loads = []
            for name, group in groups.items():
                task = progress.add_task(name, total=len(group))
                loads.append(pool.add(name, group, on_ready=lambda task=task: progress.advance(task)))
            await asyncio.gather(*loads)
    except APIError as error:
        log.error(error.message)
        await pool.close()
        return 1
    # SIGTERM: uvicorn stops accepting; the requests in flight get the grace period, then the workers end the rest.
    server = GracefulServer(server_config, on_stop=lambda: pool.shutdown(shutdown_grace))
    try:
        await server.serve()
    finally:
        await pool.close()
    return 0


@app.command()
def serve(
    ids: Annotated[list[str], typer.Option("--id", "-id", help=f"A model spec 'key=value ...' (repeatable); keys: {', '.join(VALID_KEYS)}.")] = [],  # noqa: B006 (typer reads it)
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="A GGUF file; default (no -id): the bundled SmolLM2-135M-Instruct.")] = None,
    model_name: Annotated[Optional[str], typer.Option(help="The name clients use for --model; default: the file's stem.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per model instance; default: all cores.")] = None,
    cache_size: Annotated[Optional[int], typer.Option(help="KV cache tokens in all; each parallel sequence gets an equal share unless --unified-kv.")] = None,
    unified_kv: Annotated[Optional[bool], typer.Option("--unified-kv", help="One KV pool for all sequences: longer contexts, but greedy output may vary with the batch.")] = None,
    max_sequences: Annotated[Optional[int], typer.Option(help="Sequences decoded together in one batch (default 8).")] = None,
    prompt_cache_mb: Annotated[Optional[float], typer.Option(help="MiB of RAM for the KV caches of conversations that lost their slot to others, restored when they go on (default 1024, none with --unified-kv on a GPU, where saving one is slow; 0: none).")] = None,
    cache_quant: Annotated[Optional[str], typer.Option(help="KV cache type: FP16, Q8, Q6, Q4.")] = None,
    chat_template: Annotated[Optional[Path], typer.Option(help="A Jinja chat template file to use instead of the model's.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    api_key: Annotated[list[str], typer.Option(envvar="GALLAMA_API_KEY", help="A key every /v1 request must send as 'Authorization: Bearer <key>' (repeatable; the variable takes a comma-separated list).")] = [],  # noqa: B006
    admin_key: Annotated[list[str], typer.Option(envvar="GALLAMA_ADMIN_KEY", help="A key for /add_model and /remove_model (repeatable).")] = [],  # noqa: B006
    cors_origin: Annotated[list[str], typer.Option(help="An origin allowed by CORS (repeatable); CORS is off without one.")] = [],  # noqa: B006
    max_body_mb: Annotated[float, typer.Option(help="Largest request body accepted, in MB.")] = 8.0,
    request_timeout: Annotated[Optional[float], typer.Option(help="Seconds a generation may take, queue wait included; past it, it ends with a 'request_timeout' error (per model: request_timeout=).")] = None,
    shutdown_grace: Annotated[float, typer.Option(help="On SIGTERM, seconds the requests in flight get to finish before they end with an error.")] = 5.0,
    strict_model_names: Annotated[bool, typer.Option("--strict-model-names", envvar="GALLAMA_STRICT_MODEL_NAMES", help="A request for a model that is not served gets a 404; by default it goes to the first model of the kind its endpoint needs.")] = False,
    responses_store: Annotated[Optional[Path], typer.Option(help="A SQLite file that keeps /v1/responses' stored responses across restarts; default: a temporary one, deleted at shutdown.")] = None,
    worker_processes: Annotated[bool, typer.Option("--worker-processes", help="Run every model instance in a worker process of its own, restarted if it dies; by default the first one runs in the server's own process (less memory, faster first tokens), and a crash of its engine ends the server.")] = False,
    ray: Annotated[Optional[str], typer.Option("--ray", envvar="GALLAMA_RAY", help="Place every model instance on this Ray cluster as an actor ('auto': the cluster `ray start` joined this machine to; or HOST:PORT); default: model_config.yaml's 'ray:', else local worker processes. Needs gallama[ray].")] = None,
) -> None:
    """Serve models over an OpenAI-compatible HTTP API: the first model instance in this process, the others
    in worker processes of their own (all of them with --worker-processes; on Ray nodes with --ray).

    The flags are defaults for every model; a spec's own keys, then its model_config.yaml entry, win over them.
    """
    _setup_logging(log_level)
    flags = {"threads": threads, "cache_size": cache_size, "unified_kv": unified_kv, "max_sequences": max_sequences,
             "prompt_cache_mb": prompt_cache_mb,
             "cache_quant": cache_quant, "chat_template": str(chat_template) if chat_template else None,
             "request_timeout": request_timeout}
    defaults = {key: value for key, value in flags.items() if value is not None}
    try:
        ensure_config()
        config = load_config()
        ray = ray or configured_ray_address()
        cluster = _join_ray(ray, defaults) if ray else None
        # On a Ray cluster, the node that runs an instance finds its files and resolves its spec.
        specs = [cluster.prepare(spec, config) if cluster else resolve(spec, config, defaults)
                 for spec in _cli_specs(model, model_name, ids)]
    except SpecError as error:
        raise typer.BadParameter(str(error), param_hint="-id/--model") from None
    from gallama.router.front import create_front, group_specs
    from gallama.router.handover import HandoverProtocol
    from gallama.router.pool import ModelPool
    from gallama.server.responses_store import ResponsesStore

    store_path = str(responses_store) if responses_store else ResponsesStore.temporary_path()
    store = ResponsesStore(store_path)
    pool = ModelPool(log_level="debug" if log_level == "debug" else "warning", strict_model_names=strict_model_names,
                     responses_store=store_path, cluster=cluster, in_process=not worker_processes)
    guard = GuardSettings(api_keys=_split_keys(api_key), admin_keys=_split_keys(admin_key),
                          max_body_bytes=int(max_body_mb * 1024 * 1024))
    front = create_front(pool, defaults, guard=guard, cors_origins=cors_origin, responses_store=store)
    # The workers end what is left once the grace period is over: a few seconds more cover that.
    # HandoverProtocol: streamed responses go from the workers to the clients' sockets (gallama.server.handover).
    server_config = uvicorn.Config(front, host=host, port=port, log_level=log_level.lower(), http=HandoverProtocol,
                                   access_log=False, timeout_graceful_shutdown=shutdown_grace + 5)
    # uvicorn's own loop choice (uvloop when installed), as uvicorn.run would make it.
    try:
        with asyncio.Runner(loop_factory=server_config.get_loop_factory()) as runner:
            code = runner.run(_serve(pool, group_specs(specs), server_config, shutdown_grace))
    finally:
        store.close()
        if cluster is not None:
            cluster.close()
        if not responses_store:  # the temporary store goes with the server
            for suffix in ("", "-wal", "-shm"):
                Path(store_path + suffix).unlink(missing_ok=True)
    raise typer.Exit(code)


def _join_ray(address: str, defaults: dict[str, Any]):
    try:
        from gallama.router.ray_instances import RayCluster
    except ImportError:
        raise typer.BadParameter("placing instances on a Ray cluster needs Ray: pip install 'gallama[ray]'",
                                 param_hint="--ray") from None
    try:
        return RayCluster(address, defaults)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise typer.BadParameter(f"cannot join the Ray cluster at {address}: {error}", param_hint="--ray") from None


def _split_keys(values: list[str]) -> list[str]:
    return [key.strip() for value in values for key in value.split(",") if key.strip()]


@app.command("worker", hidden=True)
def worker(
    spec_json: str,
    log_level: Annotated[str, typer.Option()] = "warning",
    handover_fd: Annotated[Optional[int], typer.Option()] = None,
    responses_store: Annotated[Optional[str], typer.Option()] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    handover_socket: Annotated[Optional[str], typer.Option()] = None,
) -> None:
    """One model instance (started by `serve`; not for direct use)."""
    from gallama.server.worker import run_worker

    _setup_logging(log_level)
    raise typer.Exit(run_worker(spec_json, log_level, handover_fd, responses_store, host, handover_socket))


@app.command("list")
def list_models(
    url: Annotated[str, typer.Option(help="A running gallama server to ask which models it serves.")] = "http://127.0.0.1:8000",
) -> None:
    """The models in model_config.yaml, and the models a running server has loaded."""
    import httpx
    from rich.table import Table

    out = Console()
    try:
        config = load_config()
    except SpecError as error:
        raise typer.BadParameter(str(error)) from None
    table = Table(title=f"configured in {ensure_config()}")
    for column in ("name", "model_id", "settings"):
        table.add_column(column)
    for name, spec in config.items():
        settings = spec.model_dump(exclude_none=True, exclude={"model_id"})
        table.add_row(name, spec.model_id, " ".join(f"{k}={v}" for k, v in settings.items()))
    out.print(table)
    try:
        served = httpx.get(f"{url}/v1/models", timeout=5).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError) as error:
        out.print(f"no gallama server answers at {url} ({type(error).__name__})")
        return
    loaded = Table(title=f"loaded at {url}")
    for column in ("name", "instances", "status", "context"):
        loaded.add_column(column)
    for card in served:
        loaded.add_row(card["id"], str(card.get("instances", 1)), card.get("status", "ready"), str(card.get("context_length", "")))
    out.print(loaded)


@app.command()
def download(
    repo: Annotated[str, typer.Argument(help="A Hugging Face model repository, e.g. bartowski/Qwen2.5-0.5B-Instruct-GGUF.")],
    file: Annotated[Optional[str], typer.Option(help="One file of the repository (e.g. a single GGUF quant); default: all of it.")] = None,
    name: Annotated[Optional[str], typer.Option(help="The model name for model_config.yaml; default: the repository's last part.")] = None,
    revision: Annotated[Optional[str], typer.Option(help="A branch, tag or commit.")] = None,
) -> None:
    """Fetch a model with huggingface_hub (progress in the terminal) and add its model_config.yaml entry."""
    from gallama.download import download_model

    _setup_logging("info")
    try:
        entry_name, path, config_file = download_model(repo, file=file, name=name, revision=revision)
    except SpecError as error:
        raise typer.BadParameter(str(error)) from None
    console.print(f"downloaded {repo} to {path}; serve it with: gallama serve -id \"model_id={entry_name}\" ({config_file})")
