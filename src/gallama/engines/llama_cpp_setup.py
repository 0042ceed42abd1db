"""Loading a GGUF model and creating a llama.cpp context for it, shared by the main and draft models."""

from __future__ import annotations

import ctypes

import llama_cpp
from llama_cpp import _internals

KV_CACHE_TYPES = {
    "FP16": llama_cpp.GGML_TYPE_F16,
    "Q8": llama_cpp.GGML_TYPE_Q8_0,
    "Q6": llama_cpp.GGML_TYPE_Q8_0,  # llama.cpp has no 6-bit KV type; Q8_0 is the nearest that is not smaller
    "Q4": llama_cpp.GGML_TYPE_Q4_0,
}


def load_model(path: str, n_gpu_layers: int = 0) -> _internals.LlamaModel:
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    # The CPU's AMX weight-repacking buffers crash llama_decode on multi-token
    # batches with this build (seen on Sapphire Rapids); plain buffers are safe.
    params.use_extra_bufts = False
    return _internals.LlamaModel(path_model=path, params=params, verbose=False)


def new_context(
    model: _internals.LlamaModel,
    *,
    n_ctx: int,
    max_sequences: int,
    n_threads: int,
    n_batch: int,
    unified_kv: bool,
    cache_quant: str | None,
    flash_attention: bool | None = None,
    n_gpu_layers: int = 0,
) -> _internals.LlamaContext:
    """`flash_attention` None: off on a CPU (see below), llama.cpp's choice (on) with GPU layers."""
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
    if flash_attention is None and n_gpu_layers <= 0:
        # llama.cpp's CPU flash-attention kernel computes one query row with the KV
        # split across threads once it holds 512+ cells, and several rows without the
        # split: a sequence's logits then depend on what shares its batch, and greedy
        # output alone differs from output beside other requests. Without it, each
        # KV stream is computed the same way in any batch; measured on the bundled
        # model (2 threads, bench/flash_attention.py): one-token steps 1.25x faster at
        # 450 tokens of context, 1.5x at 1000, 10% slower at 50; prefill 5-15% slower.
        flash_attention = False
    if flash_attention is not None:
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attention else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
    if cache_quant:
        params.type_k = params.type_v = KV_CACHE_TYPES[cache_quant]
    return _internals.LlamaContext(model=model, params=params, verbose=False)


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


def copy_sequence(ctx: _internals.LlamaContext, source: int, target: int, length: int, unified_kv: bool) -> None:
    """Makes `target`'s cache the first `length` cached tokens of `source` (whose cache stays)."""
    if unified_kv:
        # One stream: the target is added to the source's cells, nothing is copied.
        memory = llama_cpp.llama_get_memory(ctx.ctx)
        llama_cpp.llama_memory_seq_cp(memory, source, target, -1, -1)
        llama_cpp.llama_memory_seq_rm(memory, target, length, -1)
    else:
        # Across streams llama.cpp's seq_cp copies the whole stream (every cell of the context
        # length: 94 MB, 21 ms for the bundled model); a sequence's saved state holds only its own
        # cells (1.2 MB for 50 tokens), restored cell for cell into the target's stream.
        load_sequence(ctx, save_sequence(ctx, source), target, length)
