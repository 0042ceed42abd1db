"""The transformers backend's spec checks, and how it batches sequences with their own KV caches."""

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
    ("gpus=8", ["'gpus'", "transformers backend runs on the CPU only"]),
])
def test_what_the_backend_cannot_serve_is_an_error_naming_key_and_backend(gguf, extra, fragments):
    with pytest.raises(SpecError) as caught:
        resolve(parse_spec_string(f"model_id={gguf} backend=transformers {extra}"), {})
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_stacked_caches_split_back_into_each_sequence_own():
    torch = pytest.importorskip("torch", reason="the transformers extra is not installed")
    pytest.importorskip("transformers", reason="the transformers extra is not installed")
    from gallama.engines.transformers.kv_batch import cache_from_layers, split_cache, stack_caches

    def cache(length: int, fill: float):
        return cache_from_layers([(torch.full((1, 2, length, 4), fill), torch.full((1, 2, length, 4), -fill))])

    batch, mask, lengths = stack_caches([cache(3, 1.0), cache(5, 2.0)])
    assert lengths == [3, 5]
    assert mask.tolist() == [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    # A step appends one token per row, as a forward pass does.
    batch.update(torch.full((2, 2, 1, 4), 9.0), torch.full((2, 2, 1, 4), -9.0), 0)
    first, second = split_cache(batch, lengths)
    assert first.layers[0].keys[0, 0, :, 0].tolist() == [1.0, 1.0, 1.0, 9.0]
    assert second.layers[0].values[0, 1, :, 0].tolist() == [-2.0] * 5 + [-9.0]
