"""Creating llama.cpp contexts for each KV cache setting, and llama.cpp's own reason when it refuses one."""

from __future__ import annotations

import pytest

from gallama.bundled_models import DEFAULT_CHAT_MODEL, locate
from gallama.engines.llama_cpp.setup import (
    LlamaCppRefused, copies_by_stream, describe_kv, flash_attention_for, load_model, model_size, new_context,
)

PATH = str(locate(DEFAULT_CHAT_MODEL))


@pytest.fixture(scope="module")
def model():
    loaded = load_model(PATH)
    yield loaded
    loaded.close()


def context(model, **kwargs):
    return new_context(model, n_ctx=1024, max_sequences=2, n_threads=1, n_batch=64, unified_kv=False, **kwargs)


@pytest.mark.parametrize("cache_quant, cache_quant_v, flash", [
    ("Q8", None, True), ("Q4", None, True), ("Q6", None, True), ("Q8", "FP16", False), ("Q4", "FP16", False),
])
def test_every_cache_type_gets_a_context(model, cache_quant, cache_quant_v, flash):
    assert flash_attention_for(None, cache_quant_v or cache_quant, on_gpu=False) is flash
    context(model, cache_quant=cache_quant, cache_quant_v=cache_quant_v).close()


def test_flash_attention_defaults():
    assert flash_attention_for(None, None, on_gpu=False) is False  # batch-invariant CPU default
    assert flash_attention_for(None, "FP16", on_gpu=True) is None  # llama.cpp's choice on a GPU
    assert flash_attention_for(True, None, on_gpu=False) is True
    assert describe_kv("Q8", None, True) == "Q8, flash attention on"
    assert describe_kv("Q4", "FP16", False) == "K Q4, V FP16, flash attention off"


def test_a_refused_context_says_llama_cpps_reason_and_the_key_to_change(model):
    with pytest.raises(LlamaCppRefused) as caught:
        context(model, cache_quant="Q8", flash_attention=False)
    message = str(caught.value)
    assert "quantized V cache requires flash_attn" in message
    assert "change cache_quant_v=FP16" in message and "Failed to create llama_context" not in message


def test_a_file_llama_cpp_cannot_read_says_why(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file")
    with pytest.raises(LlamaCppRefused, match="invalid magic characters"):
        load_model(str(path))


def test_model_size_reads_the_shape_from_the_header():
    size = model_size(PATH, 4096, None, None)
    assert size.n_layer == 30 and size.weights_bytes > 90e6
    # SmolLM2-135M: 3 KV heads of 64 values, K and V, 2 bytes each, per layer and token.
    assert size.kv_bytes == 4096 * 30 * 3 * 64 * 2 * 2
    assert model_size(PATH, 4096, "Q8", "FP16").kv_bytes < size.kv_bytes


def test_a_prefix_is_copied_through_a_saved_state_only_across_streams_on_the_cpu():
    assert not copies_by_stream(unified_kv=False, on_gpu=False)
    assert copies_by_stream(unified_kv=True, on_gpu=False)
    assert copies_by_stream(unified_kv=False, on_gpu=True)
