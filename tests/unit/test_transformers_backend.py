"""The transformers backend's spec checks, and its KV buffer of a slot per sequence."""

from __future__ import annotations

from pathlib import Path

import pytest

from gallama.config import ModelSpec, SpecError, parse_spec_string, resolve


@pytest.fixture
def gguf(tmp_path) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF")  # resolving a spec reads no weights
    return path


def test_a_gguf_file_can_go_to_transformers(gguf):
    spec = resolve(parse_spec_string(f"model_id={gguf} backend=transformers"), {})
    assert spec.backend == "transformers" and spec.model_type == "llm" and spec.max_sequences == 8


def test_a_folder_with_config_json_implies_transformers(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    spec = resolve(ModelSpec(model_id=str(tmp_path)), {})
    assert spec.backend == "transformers" and spec.model_id == str(tmp_path.resolve())


@pytest.mark.parametrize("extra, fragments", [
    ("draft_mode=ngram", ["the transformers backend does not take 'draft_mode'"]),
    ("unified_kv=true", ["the transformers backend does not take 'unified_kv'"]),
    ("cache_quant=Q8", ["'cache_quant'=Q8", "transformers backend"]),
    ("dtype=int8", ["bad value for 'dtype'"]),
])
def test_what_the_backend_cannot_serve_is_an_error_naming_key_and_backend(gguf, extra, fragments):
    with pytest.raises(SpecError) as caught:
        resolve(parse_spec_string(f"model_id={gguf} backend=transformers {extra}"), {})
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_gpus_the_machine_lacks_are_an_error_naming_the_key(gguf, monkeypatch):
    torch = pytest.importorskip("torch", reason="the transformers extra is not installed")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    resolve(parse_spec_string(f"model_id={gguf} backend=transformers gpus=8"), {})  # GPU 0 is there
    with pytest.raises(SpecError) as caught:
        resolve(parse_spec_string(f"model_id={gguf} backend=transformers gpus=0,8"), {})
    assert "'gpus'=0,8" in str(caught.value) and "sees 1 CUDA GPU" in str(caught.value)


def test_gpus_become_accelerate_placement_within_each_gpu_budget():
    from gallama.engines.transformers.placement import GIB, device_map_options

    assert device_map_options(None, 64 * GIB) == {}
    assert device_map_options([0, 0], 64 * GIB) == {}
    options = device_map_options([20, 0, 10], 64 * GIB)
    assert options == {"device_map": "auto", "max_memory": {0: 18 * GIB, 2: 9 * GIB, "cpu": 64 * GIB}}


@pytest.mark.parametrize("dtype, on_gpu, expected", [
    (None, False, "float32"), ("auto", False, "float32"), (None, True, "bfloat16"), ("auto", True, "bfloat16"),
    ("bf16", False, "bfloat16"), ("float16", True, "float16"), ("fp32", True, "float32"),
])
def test_dtype_auto_is_bf16_on_a_gpu_and_fp32_on_a_cpu(dtype, on_gpu, expected):
    from gallama.engines.transformers.placement import dtype_name

    assert dtype_name(dtype, on_gpu) == expected


def test_dtype_is_a_transformers_key_only(gguf):
    spec = resolve(parse_spec_string(f"model_id={gguf} backend=transformers dtype=BF16"), {})
    assert spec.dtype == "bf16"
    with pytest.raises(SpecError, match="the llama_cpp backend does not take 'dtype'"):
        resolve(parse_spec_string(f"model_id={gguf} dtype=bf16"), {})


def _slot_cache():
    pytest.importorskip("torch", reason="the transformers extra is not installed")
    pytest.importorskip("transformers", reason="the transformers extra is not installed")
    from gallama.engines.transformers import kv_slots

    return kv_slots


def test_a_step_writes_each_row_into_its_slot_and_reads_the_rows_slots():
    kv_slots = _slot_cache()
    import torch

    cache = kv_slots.SlotCache(num_layers=1, slots=3, max_length=16)
    layer = cache.layers[0]
    cache.plan([1], [0], 3)  # a 3-token prompt into slot 1
    layer.update(torch.full((1, 2, 3, 4), 1.0), torch.full((1, 2, 3, 4), -1.0))
    cache.plan([2], [0], 5)
    layer.update(torch.full((1, 2, 5, 4), 2.0), torch.full((1, 2, 5, 4), -2.0))
    step = cache.plan([1, 2], [3, 5], 1)  # one decoded token each, at its own position
    keys, values = layer.update(torch.full((2, 2, 1, 4), 9.0), torch.full((2, 2, 1, 4), -9.0))
    assert step.contiguous and step.width == 6
    assert keys[0, 0, :, 0].tolist() == [1.0, 1.0, 1.0, 9.0, 0.0, 0.0]  # past its token: masked out
    assert values[1, 1, :, 0].tolist() == [-2.0] * 5 + [-9.0]
    assert keys._base is layer.keys  # consecutive slots: a view, no copy
    cache.plan([0, 2], [0, 6], 1)
    gathered, _ = layer.update(torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4))
    assert gathered[1, 0, :6, 0].tolist() == [2.0] * 5 + [9.0]


def test_a_step_moves_its_rows_slots_and_positions_to_a_device_once():
    """Every layer indexes its buffers with them: one copy a step per device, not two per layer for
    keys and two for values (a copy from host memory to a GPU waits for the GPU)."""
    kv_slots = _slot_cache()
    import torch

    meta = torch.device("meta")  # a device of its own, where each copy is a new tensor
    cache = kv_slots.SlotCache(num_layers=3, slots=4, max_length=16)
    step = cache.plan([0, 2], [1, 3], 1)
    slots, starts = step.on(meta)
    for layer in cache.layers:
        keys, _ = layer.update(torch.zeros(2, 1, 1, 2, device=meta), torch.zeros(2, 1, 1, 2, device=meta))
        assert keys.shape == (2, 1, 4, 2)
    assert slots.device == meta and step.on(meta)[0] is slots and step.on(meta)[1] is starts


def test_a_buffer_grows_with_the_longest_sequence_and_keeps_what_it_held():
    kv_slots = _slot_cache()
    import torch

    cache = kv_slots.SlotCache(num_layers=1, slots=2, max_length=1000)
    layer = cache.layers[0]
    cache.plan([0], [0], 2)
    layer.update(torch.ones(1, 1, 2, 1), torch.ones(1, 1, 2, 1))
    assert layer.keys.shape[2] == kv_slots.GROWTH
    cache.plan([0], [2], kv_slots.GROWTH)
    layer.update(torch.full((1, 1, kv_slots.GROWTH, 1), 3.0), torch.zeros(1, 1, kv_slots.GROWTH, 1))
    assert layer.keys.shape[2] == 2 * kv_slots.GROWTH
    assert layer.keys[0, 0, :4, 0].tolist() == [1.0, 1.0, 3.0, 3.0]
    cache.copy_slot(0, 1, 3)
    assert layer.keys[1, 0, :4, 0].tolist() == [1.0, 1.0, 3.0, 0.0]


def test_masks_show_each_row_its_own_positions_and_the_sliding_window():
    kv_slots = _slot_cache()
    import torch
    from types import SimpleNamespace

    cache = kv_slots.SlotCache(num_layers=1, slots=2, max_length=16)
    step = cache.plan([0, 1], [2, 4], 1)
    mask = kv_slots.attention_mask(step, SimpleNamespace(), torch.float32)
    assert mask.shape == (2, 1, 1, 5)
    assert (mask[:, 0, 0] == 0).tolist() == [[True, True, True, False, False], [True] * 5]
    hybrid = SimpleNamespace(sliding_window=2, layer_types=["full_attention", "sliding_attention"])
    masks = kv_slots.attention_mask(cache.plan([0], [3], 2), hybrid, torch.float32)
    assert (masks["full_attention"][0, 0] == 0).tolist() == [[True] * 4 + [False], [True] * 5]
    assert (masks["sliding_attention"][0, 0] == 0).tolist() == [
        [False, False, True, True, False], [False, False, False, True, True]]
