"""ModelSpec parsing from -id strings and model_config.yaml, and resolving model_id."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from gallama.bundled_models import DEFAULT_CHAT_MODEL
from gallama.config import (
    VALID_KEYS, ModelSpec, SpecError, add_config_entry, config_path, ensure_config, load_config, parse_spec_string,
    resolve,
)
from gallama.engines.backend import COMMON_KEYS
from gallama.engines.llama_cpp.backend import DEFAULT_MAX_SEQUENCES
from gallama.engines.registry import BACKENDS


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GALLAMA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def gguf(tmp_path) -> Path:
    path = tmp_path / "models" / "tiny-model.Q4.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF")  # resolution only checks the file, it does not load it
    return path


def test_parse_issue_example():
    spec = parse_spec_string("model_id=mistral gpus=20,0 cache_size=4096 cache_quant=Q8")
    assert spec.model_id == "mistral" and spec.gpus == [20.0, 0.0]
    assert spec.cache_size == 4096 and spec.cache_quant == "Q8"
    assert spec.model_name is None and spec.backend is None


def test_parse_quoted_values_and_draft_keys():
    spec = parse_spec_string("model_id='/models/my model.gguf' draft_model_id=small draft_cache_size=512")
    assert spec.model_id == "/models/my model.gguf"
    assert spec.draft_model_id == "small" and spec.draft_cache_size == 512


@pytest.mark.parametrize("text, fragment", [
    ("model_id=x colour=blue", "unknown key 'colour'"),
    ("model_id=x cache_size=lots", "bad value for 'cache_size'"),
    ("model_id=x cache_quant=Q3", "bad value for 'cache_quant'"),
    ("model_id=x gpus=20,-1", "bad value for 'gpus'"),
    ("model_id=x threads=0", "bad value for 'threads'"),
    ("cache_size=4096", "'model_id' is required"),
    ("model_id=x justaword", "is not key=value"),
])
def test_bad_specs_name_the_problem_and_list_valid_keys(text, fragment):
    with pytest.raises(SpecError) as caught:
        parse_spec_string(text)
    assert fragment in str(caught.value)
    assert "valid keys: model_id, model_name" in str(caught.value)


def test_first_use_writes_a_commented_config(home):
    path = ensure_config()
    assert path == config_path() == home / "model_config.yaml"
    text = path.read_text()
    assert f"# {DEFAULT_CHAT_MODEL.name}:" in text
    assert load_config() == {}  # only comments: no entries yet
    path.write_text("# mine\n")
    ensure_config()
    assert path.read_text() == "# mine\n"  # never overwritten


def test_entries_are_appended_keeping_comments(gguf):
    path = ensure_config()
    add_config_entry("tiny", ModelSpec(model_id=str(gguf), cache_size=2048))
    config = load_config()
    assert config["tiny"].model_id == str(gguf) and config["tiny"].cache_size == 2048
    assert path.read_text().startswith("# gallama model configuration")
    with pytest.raises(SpecError, match="already has an entry named 'tiny'"):
        add_config_entry("tiny", ModelSpec(model_id=str(gguf)))


def test_bad_yaml_entry_names_the_entry():
    ensure_config().write_text("broken:\n  model_id: x\n  cache_sise: 3\n")
    with pytest.raises(SpecError, match="broken: unknown key 'cache_sise'"):
        load_config()


def test_resolve_gguf_file_defaults(gguf):
    spec = resolve(ModelSpec(model_id=str(gguf)), {})
    assert spec.model_id == str(gguf.resolve()) and spec.model_name == "tiny-model.Q4"
    assert spec.backend == "llama_cpp" and spec.model_type == "llm"
    assert spec.max_sequences == DEFAULT_MAX_SEQUENCES


def test_resolve_folder_with_one_gguf(gguf):
    spec = resolve(ModelSpec(model_id=str(gguf.parent)), {})
    assert spec.model_id == str(gguf.resolve()) and spec.model_name == "models"
    (gguf.parent / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(SpecError, match="several GGUF files"):
        resolve(ModelSpec(model_id=str(gguf.parent)), {})


def test_resolve_bundled_default():
    spec = resolve(ModelSpec(model_id=DEFAULT_CHAT_MODEL.name.lower()), {})
    assert spec.model_name == DEFAULT_CHAT_MODEL.name and spec.model_id.endswith(".gguf")


def test_precedence_spec_then_config_entry_then_flags(gguf):
    config = {"tiny": ModelSpec(model_id=str(gguf), cache_size=2048, threads=3)}
    spec = resolve(ModelSpec(model_id="tiny", threads=1), config, defaults={"cache_size": 999, "max_sequences": 2})
    assert spec.model_name == "tiny"  # the config name, not the file's stem
    assert (spec.threads, spec.cache_size, spec.max_sequences) == (1, 2048, 2)


def test_max_seq_len_sets_the_cache_or_must_agree_with_it(gguf):
    spec = resolve(ModelSpec(model_id=str(gguf), max_seq_len=1024, max_sequences=4), {})
    assert spec.cache_size == 4096
    with pytest.raises(SpecError, match="needs cache_size=4096"):
        resolve(ModelSpec(model_id=str(gguf), max_seq_len=1024, max_sequences=4, cache_size=1000), {})


def test_ngram_draft_mode_is_accepted(gguf):
    spec = resolve(parse_spec_string(f"model_id={gguf} draft_mode=ngram num_draft_tokens=4"), {})
    assert spec.draft_mode == "ngram" and spec.num_draft_tokens == 4
    with pytest.raises(Exception, match="draft_mode"):
        parse_spec_string(f"model_id={gguf} draft_mode=eagle")


def test_draft_model_resolves_like_a_model_id(gguf):
    config = {"small": ModelSpec(model_id=str(gguf))}
    spec = resolve(parse_spec_string(f"model_id={gguf} draft_model_id=small num_draft_tokens=3"), config)
    assert spec.draft_model_id == str(gguf.resolve()) and spec.num_draft_tokens == 3


@pytest.mark.parametrize("extra, fragment", [
    ({"model_id": "/no/such/file.gguf"}, "is not a name in"),
    ({"backend": "exllama"}, "package 'exllamav2'"),
    ({"draft_model_id": "/no/such/draft.gguf"}, "is not a name in"),
    ({"draft_cache_size": 512}, "draft_cache_size configure a draft model: give draft_model_id too"),
    ({"draft_model_id": "SmolLM2-135M-Instruct", "draft_mode": "ngram"}, "not both"),
    ({"chat_template": "/no/such/template.jinja"}, "chat_template: no such file"),
])
def test_unloadable_specs_say_why(gguf, extra, fragment):
    with pytest.raises(SpecError) as caught:
        resolve(ModelSpec(**{"model_id": str(gguf), **extra}), {})
    assert fragment in str(caught.value)


@pytest.mark.skipif(llama_cpp.llama_supports_gpu_offload(), reason="this llama.cpp build can offload to a GPU")
def test_gpus_on_a_cpu_only_build_are_refused(gguf):
    for spec in (ModelSpec(model_id=str(gguf), gpus=[8]), parse_spec_string(f"model_id={gguf} gpus=20,0,0,0"),
                 ModelSpec(model_id=str(gguf), model_type="embedding", gpus=[0, 1])):
        with pytest.raises(SpecError, match="runs on CPUs only: install llama-cpp-python with CUDA"):
            resolve(spec, {})


@pytest.mark.parametrize("text, key, value", [
    ("model_id=x backend=Llama_cpp", "backend", "llama_cpp"),
    ("model_id=x backend=EMBEDDING", "backend", "embedding"),
    ("model_id=x backend=exLlama", "backend", "exllama"),
    ("model_id=x cache_quant=fp16", "cache_quant", "FP16"),
    ("model_id=x cache_quant=q8", "cache_quant", "Q8"),
    ("model_id=x draft_cache_quant=q4", "draft_cache_quant", "Q4"),
    ("model_id=x model_type=Embedding", "model_type", "embedding"),
])
def test_spellings_of_the_original_readme_are_accepted(text, key, value):
    assert getattr(parse_spec_string(text), key) == value


def test_a_backend_this_install_lacks_names_the_available_ones(gguf):
    with pytest.raises(SpecError) as caught:
        resolve(parse_spec_string(f"model_id={gguf} backend=exLlama"), {})
    assert "backend 'exllama' is not available" in str(caught.value)
    assert "the backends this install has: llama_cpp, transformers, embedding" in str(caught.value)


def test_zero_gpus_mean_cpu(gguf):
    assert resolve(ModelSpec(model_id=str(gguf), gpus="0,0"), {}).gpus == [0.0, 0.0]


def test_non_gguf_file_is_refused(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(SpecError, match="not a GGUF file"):
        resolve(ModelSpec(model_id=str(path)), {})


def test_prompt_cache_size_is_a_spec_key_and_not_negative(gguf):
    spec = resolve(parse_spec_string(f"model_id={gguf} prompt_cache_mb=0"), {}, defaults={"prompt_cache_mb": 512})
    assert spec.prompt_cache_mb == 0  # the spec's own 0 (off) wins over the flag
    assert resolve(ModelSpec(model_id=str(gguf)), {}, defaults={"prompt_cache_mb": 512}).prompt_cache_mb == 512
    with pytest.raises(Exception, match="prompt_cache_mb"):
        parse_spec_string(f"model_id={gguf} prompt_cache_mb=-1")


def test_a_quantized_v_cache_cannot_go_without_flash_attention(gguf):
    with pytest.raises(SpecError, match="quantizes the V cache only with flash attention.*cache_quant_v=FP16"):
        resolve(parse_spec_string(f"model_id={gguf} cache_quant=Q8 flash_attention=false"), {})
    spec = resolve(parse_spec_string(f"model_id={gguf} cache_quant=q4 cache_quant_v=fp16 flash_attention=false"), {})
    assert (spec.cache_quant, spec.cache_quant_v) == ("Q4", "FP16")
    with pytest.raises(SpecError, match="give cache_quant too"):
        resolve(parse_spec_string(f"model_id={gguf} cache_quant_v=Q8"), {})


@pytest.mark.parametrize("extra, key", [
    ({"cache_quant": "Q8"}, "cache_quant"),
    ({"draft_mode": "ngram"}, "draft_mode"),
    ({"request_timeout": 5}, "request_timeout"),
    ({"chat_template": "/no/such/template.jinja"}, "chat_template"),
])
def test_a_key_the_backend_does_not_take_is_an_error_naming_key_and_backend(gguf, extra, key):
    with pytest.raises(SpecError) as caught:
        resolve(ModelSpec(model_id=str(gguf), model_type="embedding", **extra), {})
    assert f"the embedding backend does not take '{key}'" in str(caught.value)
    assert "its settings: gpus, threads" in str(caught.value)


def test_a_config_entry_key_counts_as_given_but_a_flag_the_backend_does_not_take_is_dropped(gguf):
    config = {"embedder": ModelSpec(model_id=str(gguf), model_type="embedding", cache_size=512)}
    with pytest.raises(SpecError, match="the embedding backend does not take 'cache_size'"):
        resolve(ModelSpec(model_id="embedder"), config)
    flags = {"cache_size": 4096, "max_sequences": 2, "threads": 3, "request_timeout": 30.0}
    spec = resolve(ModelSpec(model_id=str(gguf), model_type="embedding"), {}, defaults=flags)
    assert (spec.backend, spec.threads, spec.cache_size, spec.max_sequences, spec.request_timeout) == (
        "embedding", 3, None, None, None)
    chat = resolve(ModelSpec(model_id=str(gguf)), {}, defaults=flags)
    assert (chat.cache_size, chat.max_sequences, chat.request_timeout) == (4096, 2, 30.0)


def test_every_backend_key_is_a_spec_key_and_every_spec_key_has_a_backend():
    taken = set(COMMON_KEYS).union(*(backend.keys for backend in BACKENDS.values()))
    assert taken == set(VALID_KEYS)


def test_model_type_and_backend_must_agree(gguf):
    with pytest.raises(SpecError, match="model_type=embedding needs a backend for such models: the llama_cpp backend"):
        resolve(ModelSpec(model_id=str(gguf), model_type="embedding", backend="llama_cpp"), {})
