"""The llama_cpp backend: GGUF chat models on llama.cpp, the spec keys they take, and their checks."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gallama.engines.backend import Backend, UnsupportedSpec

if TYPE_CHECKING:
    from gallama.config import ModelSpec
    from gallama.engines.llama_cpp.engine import LlamaCppEngine

DEFAULT_MAX_SEQUENCES = 8
DEFAULT_DRAFT_TOKENS = 5
DRAFT_MODEL_KEYS = ("draft_model_name", "draft_gpus", "draft_cache_size", "draft_cache_quant")
KEYS = frozenset({
    "gpus", "cache_size", "cache_quant", "cache_quant_v", "max_seq_len", "max_sequences", "threads", "unified_kv",
    "prompt_cache_mb", "flash_attention", "chat_template", "request_timeout", "default_max_tokens", "draft_model_id", "draft_mode",
    "num_draft_tokens", *DRAFT_MODEL_KEYS,
})


def check(spec: ModelSpec) -> ModelSpec:
    if spec.max_sequences is None:
        spec = spec.model_copy(update={"max_sequences": DEFAULT_MAX_SEQUENCES})
    _check_speculation(spec)
    _check_cache_types(spec)
    return spec.model_copy(update={"cache_size": kv_cache_tokens(spec)})


def check_devices(spec: ModelSpec) -> None:
    for key in ("gpus", "draft_gpus"):
        check_gpus(key, getattr(spec, key))


def _check_speculation(spec: ModelSpec) -> None:
    if spec.draft_mode and spec.draft_model_id:
        raise UnsupportedSpec("give either draft_model_id (a draft model) or draft_mode=ngram (prompt lookup), not both")
    orphans = [key for key in DRAFT_MODEL_KEYS if getattr(spec, key) is not None]
    if orphans and not spec.draft_model_id:
        raise UnsupportedSpec(f"{', '.join(orphans)} configure a draft model: give draft_model_id too")


def _check_cache_types(spec: ModelSpec) -> None:
    if spec.cache_quant_v and not spec.cache_quant:
        raise UnsupportedSpec("cache_quant_v sets the V cache's type apart from cache_quant's: give cache_quant too")
    v_type = spec.cache_quant_v or spec.cache_quant
    if spec.flash_attention is False and v_type not in (None, "FP16"):
        raise UnsupportedSpec(
            f"llama.cpp quantizes the V cache only with flash attention: with flash_attention=false give "
            f"cache_quant_v=FP16 (K alone as {spec.cache_quant}), or leave flash_attention out (on for a quantized V)"
        )


def check_gpus(key: str, gpus: list[float] | None) -> None:
    """GB per GPU need a llama.cpp built for GPUs, and no more GPUs than it takes."""
    if not gpus or not any(gpus):
        return
    import llama_cpp  # only needed for this check: the front loads no model

    if not llama_cpp.llama_supports_gpu_offload():
        raise UnsupportedSpec(
            f"'{key}' puts the model on GPUs, but the installed llama.cpp runs on CPUs only: install "
            f"llama-cpp-python with CUDA (README, 'GPUs'), or leave out '{key}' or give 0"
        )
    if len(gpus) > llama_cpp.LLAMA_MAX_DEVICES:
        raise UnsupportedSpec(f"'{key}' lists {len(gpus)} GPUs; this llama.cpp takes at most {llama_cpp.LLAMA_MAX_DEVICES}")


def kv_cache_tokens(spec: ModelSpec) -> int | None:
    """cache_size, or max_seq_len times the sequences that each get that much; both must agree."""
    if spec.max_seq_len is None:
        return spec.cache_size
    wanted = spec.max_seq_len * (1 if spec.unified_kv else spec.max_sequences)
    if spec.cache_size is not None and spec.cache_size != wanted:
        raise UnsupportedSpec(
            f"cache_size={spec.cache_size} does not give max_seq_len={spec.max_seq_len} to each of "
            f"{spec.max_sequences} sequences (that needs cache_size={wanted}); give one of the two"
        )
    return wanted


def quiet_llama_cpp() -> None:
    """Keeps llama.cpp's load chatter out of a worker's log (its warnings and errors stay)."""
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def load(spec: ModelSpec) -> LlamaCppEngine:
    quiet_llama_cpp()
    from gallama.engines.llama_cpp.engine import LlamaCppEngine

    return LlamaCppEngine(
        spec.model_id, cache_size=spec.cache_size, max_sequences=spec.max_sequences, n_threads=spec.threads,
        cache_quant=spec.cache_quant, cache_quant_v=spec.cache_quant_v, unified_kv=bool(spec.unified_kv),
        prompt_cache_mb=spec.prompt_cache_mb,
        flash_attention=spec.flash_attention, gpus=spec.gpus,
        draft_mode=spec.draft_mode, num_draft_tokens=spec.num_draft_tokens or DEFAULT_DRAFT_TOKENS,
        draft_model_path=spec.draft_model_id, draft_cache_size=spec.draft_cache_size,
        draft_cache_quant=spec.draft_cache_quant, draft_gpus=spec.draft_gpus,
    )


LLAMA_CPP = Backend(name="llama_cpp", kind="llm", keys=KEYS, check=check, check_devices=check_devices, load=load)
