"""The transformers backend: Hugging Face model folders (config.json) and GGUF files, dequantized, on the CPU or GPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gallama.engines.backend import Backend, UnsupportedSpec
from gallama.engines.transformers.placement import gpu_indices

if TYPE_CHECKING:
    from gallama.config import ModelSpec
    from gallama.engines.transformers.engine import TransformersEngine

DEFAULT_MAX_SEQUENCES = 8
KEYS = frozenset({
    "gpus", "cache_quant", "max_seq_len", "max_sequences", "threads", "chat_template", "request_timeout",
    "default_max_tokens", "dtype",
})


def check(spec: ModelSpec) -> ModelSpec:
    if spec.cache_quant not in (None, "FP16"):
        raise UnsupportedSpec(f"'cache_quant'={spec.cache_quant}: the transformers backend keeps its KV cache "
                              "in the model's dtype; leave cache_quant out")
    if spec.max_sequences is None:
        spec = spec.model_copy(update={"max_sequences": DEFAULT_MAX_SEQUENCES})
    return spec


def check_devices(spec: ModelSpec) -> None:
    used = gpu_indices(spec.gpus)
    if not used:
        return
    try:
        import torch
    except ImportError:
        return  # load() says which extra is missing
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if used[-1] >= visible:
        raise UnsupportedSpec(f"'gpus'={','.join(f'{gb:g}' for gb in spec.gpus)}: torch sees {visible} CUDA GPU(s) here "
                              f"(the transformers backend needs GPU {used[-1]}); give 0 or leave gpus out for the CPU")


def load(spec: ModelSpec) -> TransformersEngine:
    try:
        from gallama.engines.transformers.engine import TransformersEngine
    except ImportError as error:
        raise UnsupportedSpec(f"the transformers backend needs the 'transformers' extra "
                              f"(pip install 'gallama[transformers]'): {error}") from None
    return TransformersEngine(spec.model_id, max_sequences=spec.max_sequences, threads=spec.threads,
                              max_seq_len=spec.max_seq_len, gpus=spec.gpus, dtype=spec.dtype)


TRANSFORMERS = Backend(name="transformers", kind="llm", keys=KEYS, check=check, check_devices=check_devices, load=load)
