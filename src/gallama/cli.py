"""The `gallama` command."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
import uvicorn
from rich.logging import RichHandler

from gallama.bundled_models import DEFAULT_CHAT_MODEL, BundledModelMissing, locate
from gallama.engines.llama_cpp_engine import KV_CACHE_TYPES, LlamaCppEngine
from gallama.router.registry import ModelRegistry
from gallama.router.served_model import ServedModel
from gallama.server.app import create_app

app = typer.Typer(help="gallama: an OpenAI-compatible local LLM server for agentic work.", no_args_is_help=True)
log = logging.getLogger("gallama")


@app.callback()
def main() -> None:
    """gallama: an OpenAI-compatible local LLM server for agentic work."""


def load_model(
    model_path: Path, name: str, *, cache_size: int | None, max_sequences: int, threads: int | None,
    cache_quant: str | None, chat_template: Path | None, unified_kv: bool = False,
) -> ServedModel:
    started = time.perf_counter()
    engine = LlamaCppEngine(
        str(model_path), cache_size=cache_size, max_sequences=max_sequences, n_threads=threads, cache_quant=cache_quant,
        unified_kv=unified_kv,
    )
    template = chat_template.read_text() if chat_template else None
    served = ServedModel.from_engine(name, engine, template_override=template)
    stats = engine.load_stats
    log.info(
        "loaded %s from %s on CPU: %.0f MB of weights, %d-token KV cache, %d parallel sequences of up to %d tokens, %.1fs",
        name, model_path, stats["size_bytes"] / 1e6, engine.cache_size, max_sequences, engine.context_length,
        time.perf_counter() - started,
    )
    return served


@app.command()
def serve(
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="A GGUF file; default: the bundled SmolLM2-135M-Instruct.")] = None,
    model_name: Annotated[Optional[str], typer.Option(help="The name clients use; default: the file's stem.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for decoding; default: all cores.")] = None,
    cache_size: Annotated[Optional[int], typer.Option(help="KV cache tokens in all; each parallel sequence gets an equal share unless --unified-kv.")] = None,
    unified_kv: Annotated[bool, typer.Option(help="One KV pool for all sequences: longer contexts, but greedy output may vary with the batch.")] = False,
    max_sequences: Annotated[int, typer.Option(help="Sequences decoded together in one batch.")] = 8,
    cache_quant: Annotated[Optional[str], typer.Option(help=f"KV cache type: {', '.join(KV_CACHE_TYPES)}.")] = None,
    chat_template: Annotated[Optional[Path], typer.Option(help="A Jinja chat template file to use instead of the model's.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve models over an OpenAI-compatible HTTP API."""
    logging.basicConfig(level=log_level.upper(), format="%(message)s", handlers=[RichHandler(show_path=False)])
    if cache_quant is not None and cache_quant not in KV_CACHE_TYPES:
        raise typer.BadParameter(f"choose one of {', '.join(KV_CACHE_TYPES)}", param_hint="--cache-quant")
    if model is None:
        try:
            model = locate(DEFAULT_CHAT_MODEL)
        except BundledModelMissing as error:
            raise typer.BadParameter(str(error), param_hint="--model") from error
        model_name = model_name or DEFAULT_CHAT_MODEL.name
    elif not model.is_file():
        raise typer.BadParameter(f"no such file: {model}", param_hint="--model")
    registry = ModelRegistry()
    registry.add(
        load_model(
            model, model_name or model.stem, cache_size=cache_size, max_sequences=max_sequences, threads=threads,
            cache_quant=cache_quant, chat_template=chat_template, unified_kv=unified_kv,
        )
    )
    try:
        uvicorn.run(create_app(registry), host=host, port=port, log_level=log_level.lower(), access_log=False)
    finally:
        registry.close()
