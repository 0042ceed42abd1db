"""Turning a resolved ModelSpec into a served model, inside a worker process."""

from __future__ import annotations

from pathlib import Path

from gallama.config import ModelSpec
from gallama.engines.gpu_split import describe_placement
from gallama.engines.llama_cpp_engine import LlamaCppEngine
from gallama.engines.prompt_cache import DEFAULT_PROMPT_CACHE_MB
from gallama.router.served_model import ServedModel


def load_llama_cpp(spec: ModelSpec) -> ServedModel:
    engine = LlamaCppEngine(
        spec.model_id, cache_size=spec.cache_size, max_sequences=spec.max_sequences, n_threads=spec.threads,
        cache_quant=spec.cache_quant, cache_quant_v=spec.cache_quant_v, unified_kv=bool(spec.unified_kv),
        prompt_cache_mb=DEFAULT_PROMPT_CACHE_MB if spec.prompt_cache_mb is None else spec.prompt_cache_mb,
        flash_attention=spec.flash_attention, gpus=spec.gpus,
        draft_mode=spec.draft_mode, num_draft_tokens=spec.num_draft_tokens or 5,
        draft_model_path=spec.draft_model_id, draft_cache_size=spec.draft_cache_size,
        draft_cache_quant=spec.draft_cache_quant, draft_gpus=spec.draft_gpus,
    )
    template = Path(spec.chat_template).read_text() if spec.chat_template else None
    return ServedModel.from_engine(spec.model_name, engine, template_override=template, request_timeout=spec.request_timeout,
                                   default_max_tokens=spec.default_max_tokens)


def load_embedding(spec: ModelSpec):
    # EMBEDDING BACKEND HOOK (issue 7); resolve() has already refused embedding specs when it is absent.
    from gallama.router.served_embedding_model import load_embedding_model

    return load_embedding_model(spec)


def load_served(spec: ModelSpec):
    if spec.backend == "embedding":
        return load_embedding(spec)
    return load_llama_cpp(spec)


def memory_facts(served) -> dict[str, int | str]:
    """What the front logs about a loaded instance: weights and KV sizes where the engine knows them."""
    engine = getattr(served, "engine", None)
    facts: dict[str, int] = {}
    if engine is not None and hasattr(engine, "load_stats"):
        facts["weights_bytes"] = engine.load_stats["size_bytes"]
    for key in ("cache_size", "context_length", "kv_description"):
        if hasattr(engine, key):
            facts[key] = getattr(engine, key)
    if hasattr(engine, "placement"):
        facts["placement"] = describe_placement(engine.placement)
    return facts
