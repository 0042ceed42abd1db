"""Loading a GGUF model and creating a llama.cpp context for it, shared by the main and draft models."""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator

import llama_cpp
from llama_cpp import _internals
from llama_cpp._logger import llama_log_callback as LLAMA_CPP_PYTHON_LOGGER

from gallama.engines.llama_cpp.gpu_split import GpuPlacement, ModelSize, place

KV_CACHE_TYPES = {
    "FP16": llama_cpp.GGML_TYPE_F16,
    "Q8": llama_cpp.GGML_TYPE_Q8_0,
    "Q6": llama_cpp.GGML_TYPE_Q8_0,  # llama.cpp has no 6-bit KV type; Q8_0 is the nearest that is not smaller
    "Q4": llama_cpp.GGML_TYPE_Q4_0,
}
KV_BYTES_PER_VALUE = {"FP16": 2.0, "Q8": 34 / 32, "Q6": 34 / 32, "Q4": 18 / 32}  # a Q block: 32 values and a scale
GGML_LOG_WARN, GGML_LOG_ERROR, GGML_LOG_CONT = 3, 4, 5  # ggml.h (llama_cpp._logger maps older values)
# Which spec keys to change when llama.cpp refuses a context for this reason (first match).
REASON_KEYS = (
    ("quantized V cache", "cache_quant_v=FP16 (K alone quantized) or flash_attention=true"),
    ("K cache type", "cache_quant"),
    ("flash_attn", "flash_attention"),
    ("alloc", "cache_size, max_sequences or gpus"),
    ("memory", "cache_size, max_sequences or gpus"),
)
ANY_CONTEXT_KEY = "cache_size, cache_quant, flash_attention, max_sequences or gpus"


class LlamaCppRefused(RuntimeError):
    """llama.cpp would not load the model or create its context; the message has llama.cpp's reason."""


@contextmanager
def llama_cpp_complaints() -> Iterator[list[str]]:
    """Collects what llama.cpp logs as a warning or an error meanwhile (it says why a load fails only there)."""
    lines: list[str] = []
    last_level = [0]

    @llama_cpp.llama_log_callback
    def record(level: int, text: bytes, _user_data) -> None:
        if level != GGML_LOG_CONT:
            last_level[0] = level
        if last_level[0] in (GGML_LOG_WARN, GGML_LOG_ERROR):
            lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(record, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(LLAMA_CPP_PYTHON_LOGGER, ctypes.c_void_p(0))


def _reason(lines: list[str]) -> str:
    text = " ".join(" ".join(lines).split())
    return text or "llama.cpp gave no reason"


def _model_params(placement: GpuPlacement | None, vocab_only: bool = False) -> llama_cpp.llama_model_params:
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = vocab_only
    # The CPU's AMX weight-repacking buffers crash llama_decode on multi-token
    # batches with this build (seen on Sapphire Rapids); plain buffers are safe.
    params.use_extra_bufts = False
    if placement is None:
        params.n_gpu_layers = 0
        return params
    params.n_gpu_layers = placement.n_gpu_layers
    params.main_gpu = placement.main_gpu
    params.split_mode = llama_cpp.LLAMA_SPLIT_MODE_LAYER if placement.split else llama_cpp.LLAMA_SPLIT_MODE_NONE
    # ctypes keeps the array alive with the params (a pointer field holds its object).
    params.tensor_split = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(*placement.tensor_split)
    return params


def load_model(path: str, placement: GpuPlacement | None = None) -> _internals.LlamaModel:
    with llama_cpp_complaints() as complaints:
        try:
            return _internals.LlamaModel(path_model=path, params=_model_params(placement), verbose=False)
        except ValueError:
            raise LlamaCppRefused(f"llama.cpp could not load {path}: {_reason(complaints)}") from None


def model_size(path: str, kv_tokens: int | None, cache_quant: str | None, cache_quant_v: str | None) -> ModelSize:
    """The model's weights and the KV cache it will get, read from its header (no weights loaded)."""
    with llama_cpp_complaints() as complaints:
        try:
            model = _internals.LlamaModel(path_model=path, params=_model_params(None, vocab_only=True), verbose=False)
        except ValueError:
            raise LlamaCppRefused(f"llama.cpp could not read {path}: {_reason(complaints)}") from None
    try:
        metadata = model.metadata()  # a vocabulary-only load reads the header's keys, not the model's shape
    finally:
        model.close()
    arch = metadata.get("general.architecture", "")

    def number(key: str, default: int = 0) -> int:
        value = metadata.get(f"{arch}.{key}", "")
        return int(value) if value.isdigit() else default

    n_layer = number("block_count", 1)
    n_head = number("attention.head_count", 1)
    head_dim = number("attention.key_length") or number("embedding_length") // max(n_head, 1)
    kv_width = head_dim * number("attention.head_count_kv", n_head)  # a per-layer list is read as equal heads
    tokens = kv_tokens or number("context_length", 4096)
    bytes_per_token = kv_width * (KV_BYTES_PER_VALUE[cache_quant or "FP16"] + KV_BYTES_PER_VALUE[cache_quant_v or cache_quant or "FP16"])
    return ModelSize(weights_bytes=os.path.getsize(path), n_layer=n_layer, kv_bytes=int(tokens * n_layer * bytes_per_token))


def plan_gpus(path: str, gpus: list[float] | None, kv_tokens: int | None = None, cache_quant: str | None = None,
              cache_quant_v: str | None = None) -> GpuPlacement | None:
    """Where `gpus` (GB per GPU) puts the model; None: on the CPU."""
    if not gpus or not any(gpus):
        return None
    return place(gpus, model_size(path, kv_tokens, cache_quant, cache_quant_v))


def flash_attention_for(asked: bool | None, v_type: str | None, on_gpu: bool) -> bool | None:
    """Flash attention on or off for a context (None: llama.cpp's choice, which is on with GPU layers)."""
    if asked is not None:
        return asked
    if v_type not in (None, "FP16"):
        return True  # llama.cpp has no other kernel for a quantized V cache
    if not on_gpu:
        # llama.cpp's CPU flash-attention kernel computes one query row with the KV
        # split across threads once it holds 512+ cells, and several rows without the
        # split: a sequence's logits then depend on what shares its batch, and greedy
        # output alone differs from output beside other requests. Without it, each
        # KV stream is computed the same way in any batch; measured on the bundled
        # model (2 threads, bench/flash_attention.py): one-token steps 1.25x faster at
        # 450 tokens of context, 1.5x at 1000, 10% slower at 50; prefill 5-15% slower.
        return False
    return None


def describe_kv(cache_quant: str | None, cache_quant_v: str | None, flash_attention: bool | None) -> str:
    k_type, v_type = cache_quant or "FP16", cache_quant_v or cache_quant or "FP16"
    types = k_type if k_type == v_type else f"K {k_type}, V {v_type}"
    attention = {True: "flash attention on", False: "flash attention off", None: "flash attention: llama.cpp's choice"}
    return f"{types}, {attention[flash_attention]}"


def new_context(
    model: _internals.LlamaModel,
    *,
    n_ctx: int,
    max_sequences: int,
    n_threads: int,
    n_batch: int,
    unified_kv: bool,
    cache_quant: str | None,
    cache_quant_v: str | None = None,
    flash_attention: bool | None = None,
    on_gpu: bool = False,
) -> _internals.LlamaContext:
    """`cache_quant` is the K and V cache type, `cache_quant_v` V's when it differs;
    `flash_attention` None: as `flash_attention_for` decides."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = n_batch
    params.n_seq_max = max_sequences
    params.n_threads = params.n_threads_batch = n_threads
    # Per-sequence KV streams (the default) keep each sequence's cache laid out
    # the same whether it runs alone or in a batch, which makes greedy output
    # batch-invariant; a unified cache lets one long sequence use the whole
    # budget but changes numerics with the batch's cache layout.
    params.kv_unified = unified_kv
    params.no_perf = True
    flash_attention = flash_attention_for(flash_attention, cache_quant_v or cache_quant, on_gpu)
    if flash_attention is not None:
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attention else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
    if cache_quant:
        params.type_k = KV_CACHE_TYPES[cache_quant]
    if cache_quant_v or cache_quant:
        params.type_v = KV_CACHE_TYPES[cache_quant_v or cache_quant]
    with llama_cpp_complaints() as complaints:
        try:
            return _internals.LlamaContext(model=model, params=params, verbose=False)
        except ValueError:
            reason = _reason(complaints)
    keys = next((keys for pattern, keys in REASON_KEYS if pattern in reason), ANY_CONTEXT_KEY)
    raise LlamaCppRefused(f"llama.cpp refused to create the model's context: {reason} (change {keys})")


def token_pieces(model: _internals.LlamaModel, special: bool) -> list[bytes]:
    """Every token's bytes; with `special`, control tokens render as their text."""
    vocab = llama_cpp.llama_model_get_vocab(model.model)
    buffer = ctypes.create_string_buffer(256)
    pieces = []
    for token in range(model.n_vocab()):
        length = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, special)
        pieces.append(buffer.raw[: max(length, 0)])
    return pieces


def save_sequence(ctx: _internals.LlamaContext, seq_id: int) -> ctypes.Array:
    """The sequence's own KV cells (and their positions), as llama.cpp saves them."""
    size = llama_cpp.llama_state_seq_get_size(ctx.ctx, seq_id)
    state = (ctypes.c_uint8 * size)()
    llama_cpp.llama_state_seq_get_data(ctx.ctx, state, size, seq_id)
    return state


def load_sequence(ctx: _internals.LlamaContext, state: ctypes.Array, seq_id: int, length: int) -> None:
    """Replaces the sequence's cache with the first `length` tokens of a saved state."""
    if llama_cpp.llama_state_seq_set_data(ctx.ctx, state, len(state), seq_id) != len(state):
        raise RuntimeError(f"llama.cpp could not restore a saved state into sequence {seq_id}")
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx.ctx), seq_id, length, -1)


def copy_sequence(ctx: _internals.LlamaContext, source: int, target: int, length: int, *, by_stream: bool) -> None:
    """Makes `target`'s cache the first `length` cached tokens of `source` (whose cache stays).

    `by_stream`: with llama.cpp's own sequence copy, which in a unified cache adds the target to the
    source's cells (nothing moves) and across per-sequence streams copies the source's whole stream,
    on the device, at the next decode. Else through a saved state of the source's own cells."""
    if by_stream:
        memory = llama_cpp.llama_get_memory(ctx.ctx)
        llama_cpp.llama_memory_seq_cp(memory, source, target, -1, -1)
        llama_cpp.llama_memory_seq_rm(memory, target, length, -1)
    else:
        load_sequence(ctx, save_sequence(ctx, source), target, length)


def copies_by_stream(unified_kv: bool, on_gpu: bool) -> bool:
    """How `copy_sequence` copies for a cache. On the CPU across streams a whole stream is every cell of the
    context length (94 MB, 21 ms for the bundled model) while a saved state holds a sequence's own cells
    (1.2 MB for 50 tokens). On a GPU a saved state is read back one cell range a layer (a row of V each, with
    V transposed), a blocking copy each: 136 ms to copy 145 tokens, against under 1 ms for the stream
    (H200, bundled model; docs/benchmarks.md)."""
    return unified_kv or on_gpu
