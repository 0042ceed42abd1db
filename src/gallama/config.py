"""Model specs: the `-id "k=v ..."` strings, `model_config.yaml`, and resolving a spec to a loadable file."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gallama.bundled_models import DEFAULT_CHAT_MODEL, BundledModelMissing, locate

CONFIG_FILE = "model_config.yaml"
DEFAULT_MAX_SEQUENCES = 8
CacheQuant = Literal["FP16", "Q8", "Q6", "Q4"]
Backend = Literal["llama_cpp", "embedding", "exllama", "transformers"]
# Backends named in the spec format that this gallama has no engine for: the package they would need.
UNSUPPORTED_BACKENDS = {"exllama": "exllamav2", "transformers": "transformers"}
AVAILABLE_BACKENDS = ("llama_cpp", "embedding")


class SpecError(ValueError):
    """A spec that cannot be parsed or resolved; the message says why, for a CLI error or a 400."""


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _gpu_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part for part in value.split(",") if part.strip()]
    return value


class ModelSpec(BaseModel):
    """One model instance, in the keys of `-id`, `model_config.yaml` and `POST /add_model`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str = Field(min_length=1)
    model_name: str | None = Field(default=None, min_length=1)
    model_type: Literal["llm", "embedding"] | None = None
    backend: Backend | None = None
    gpus: list[float] | None = None
    cache_size: int | None = Field(default=None, gt=0)
    cache_quant: CacheQuant | None = None  # the K and V cache type
    # V's type when it differs: FP16 keeps flash attention off on a CPU (a quantized V needs it)
    cache_quant_v: CacheQuant | None = None
    max_seq_len: int | None = Field(default=None, gt=0)
    max_sequences: int | None = Field(default=None, gt=0)
    threads: int | None = Field(default=None, gt=0)
    unified_kv: bool | None = None
    # MiB of host memory for the KV states of conversations that lost their slot (0: none kept).
    prompt_cache_mb: float | None = Field(default=None, ge=0)
    # None: off on a CPU (batch-invariant greedy output, faster decoding past ~200 tokens of
    # context: see engines/llama_cpp_setup.py), llama.cpp's choice (on) with GPU layers.
    flash_attention: bool | None = None
    chat_template: str | None = None
    draft_model_id: str | None = None
    draft_model_name: str | None = None
    draft_gpus: list[float] | None = None
    draft_cache_size: int | None = Field(default=None, gt=0)
    draft_cache_quant: CacheQuant | None = None
    draft_mode: Literal["ngram"] | None = None  # prompt-lookup speculative decoding, no draft model needed
    num_draft_tokens: int | None = Field(default=None, gt=0, le=16)
    request_timeout: float | None = Field(default=None, gt=0)  # seconds; a longer generation ends with an error
    # The output budget of a request that sets none (llama-server's --n-predict); default: the rest of the context.
    default_max_tokens: int | None = Field(default=None, gt=0)

    _split_gpus = field_validator("gpus", "draft_gpus", mode="before")(_gpu_list)
    # The original gallama's README spells them exLlama, Llama_cpp, fp16, q8: users copy those.
    _lower_names = field_validator("backend", "model_type", "draft_mode", mode="before")(_lower)
    _upper_quants = field_validator("cache_quant", "cache_quant_v", "draft_cache_quant", mode="before")(_upper)

    @field_validator("gpus", "draft_gpus")
    @classmethod
    def _non_negative(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(gb < 0 for gb in value):
            raise ValueError("GB of VRAM per GPU cannot be negative")
        return value


VALID_KEYS = tuple(ModelSpec.model_fields)


def validation_message(error: ValidationError, where: str = "") -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "spec"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif item["type"] == "missing":
            problems.append(f"'{key}' is required")
        else:
            problems.append(f"bad value for '{key}': {item['msg']}")
    prefix = f"{where}: " if where else ""
    return f"{prefix}{'; '.join(problems)} (valid keys: {', '.join(VALID_KEYS)})"


def spec_from_dict(data: Any, where: str = "") -> ModelSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{where + ': ' if where else ''}a model spec is a mapping of keys to values (valid keys: {', '.join(VALID_KEYS)})")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(validation_message(error, where)) from None


def parse_spec_string(text: str) -> ModelSpec:
    """`"model_id=mistral gpus=20,0 cache_quant=Q8"` -> ModelSpec; values may be shell-quoted."""
    fields: dict[str, str] = {}
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise SpecError(f"cannot split '{text}': {error}") from None
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise SpecError(f"'{word}' is not key=value (valid keys: {', '.join(VALID_KEYS)})")
        fields[key] = value
    return spec_from_dict(fields, where=f"-id '{text}'")


# -- model_config.yaml ------------------------------------------------------

DEFAULT_CONFIG_TEXT = f"""\
# gallama model configuration. Each entry maps a model name to its spec, in the
# same keys as `gallama serve -id "key=value ..."`:
#   {", ".join(VALID_KEYS)}
# Serve an entry with `gallama serve -id "model_id=NAME"`; keys given there override it.
#
# {DEFAULT_CHAT_MODEL.name}:
#   model_id: {DEFAULT_CHAT_MODEL.name}   # the bundled default; or a GGUF file, or a model folder
#   cache_size: 32768                 # KV cache tokens in all, shared by the parallel sequences
#   max_sequences: 8                  # requests decoded together in one batch
#   cache_quant: FP16                 # FP16, Q8, Q6 (as Q8), Q4
#   threads: 2                        # CPU threads
"""


def gallama_home() -> Path:
    return Path(os.environ.get("GALLAMA_HOME") or Path.home() / ".gallama")


def config_path() -> Path:
    return gallama_home() / CONFIG_FILE


def ensure_config() -> Path:
    """Creates the config file with a commented example on first use."""
    path = config_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DEFAULT_CONFIG_TEXT)
    return path


def load_config(path: Path | None = None) -> dict[str, ModelSpec]:
    path = path or config_path()
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SpecError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} must map model names to specs")
    return {str(name): spec_from_dict(entry, where=f"{path}: {name}") for name, entry in data.items()}


def add_config_entry(name: str, spec: ModelSpec, path: Path | None = None) -> Path:
    """Appends an entry, keeping the comments already in the file."""
    path = path or ensure_config()
    if name in load_config(path):
        raise SpecError(f"{path} already has an entry named '{name}'")
    entry = yaml.safe_dump({name: spec.model_dump(exclude_none=True)}, sort_keys=False)
    text = path.read_text()
    path.write_text(text + ("" if text.endswith("\n") or not text else "\n") + entry)
    return path


# -- resolution -------------------------------------------------------------


def _gguf_in_folder(folder: Path) -> Path | None:
    files = sorted(p for p in folder.glob("*.gguf") if not p.name.startswith("mmproj"))
    # Split models load from their first shard; llama.cpp finds the others.
    files = [p for p in files if "-of-" not in p.stem or "-00001-of-" in p.stem]
    if len(files) > 1:
        raise SpecError(f"{folder} holds several GGUF files ({', '.join(p.name for p in files)}); give one of them as model_id")
    return files[0] if files else None


def _is_sentence_transformers(folder: Path) -> bool:
    return (folder / "modules.json").is_file() or (folder / "config_sentence_transformers.json").is_file()


def _locate(model_id: str) -> tuple[Path, str | None, str]:
    """model_id -> (path, backend it implies or None, default model name)."""
    if model_id.lower() == DEFAULT_CHAT_MODEL.name.lower():
        try:
            return locate(DEFAULT_CHAT_MODEL), "llama_cpp", DEFAULT_CHAT_MODEL.name
        except BundledModelMissing as error:
            raise SpecError(str(error)) from None
    path = Path(model_id).expanduser()
    name = path.stem if path.suffix == ".gguf" else path.name
    if path.is_file():
        if path.suffix != ".gguf":
            raise SpecError(f"{path} is not a GGUF file (the llama_cpp backend loads .gguf files)")
        return path.resolve(), "llama_cpp", name
    if path.is_dir():
        if _is_sentence_transformers(path):
            return path.resolve(), "embedding", name
        gguf = _gguf_in_folder(path)
        if gguf is None:
            raise SpecError(f"{path} holds no GGUF file and no sentence-transformers model")
        return gguf.resolve(), "llama_cpp", name
    raise SpecError(
        f"model_id '{model_id}' is not a name in {config_path()}, a GGUF file, a model folder, "
        f"or the bundled {DEFAULT_CHAT_MODEL.name}"
    )


def _check_backend(spec: ModelSpec) -> None:
    if spec.backend in UNSUPPORTED_BACKENDS:
        raise SpecError(
            f"backend '{spec.backend}' is not available: gallama has no {spec.backend} engine yet "
            f"(it would need the package '{UNSUPPORTED_BACKENDS[spec.backend]}'); the backends this install has: "
            f"{', '.join(AVAILABLE_BACKENDS)} (a GGUF file with backend=llama_cpp)"
        )
    _check_speculation(spec)
    _check_cache_types(spec)
    if spec.backend in ("llama_cpp", "embedding"):
        for key in ("gpus", "draft_gpus"):
            _check_gpus(key, getattr(spec, key), spec)


DRAFT_MODEL_KEYS = ("draft_model_name", "draft_gpus", "draft_cache_size", "draft_cache_quant")


def _check_speculation(spec: ModelSpec) -> None:
    if (spec.draft_mode or spec.draft_model_id) and spec.backend != "llama_cpp":
        raise SpecError(f"speculative decoding needs the llama_cpp backend, not {spec.backend}")
    if spec.draft_mode and spec.draft_model_id:
        raise SpecError("give either draft_model_id (a draft model) or draft_mode=ngram (prompt lookup), not both")
    orphans = [key for key in DRAFT_MODEL_KEYS if getattr(spec, key) is not None]
    if orphans and not spec.draft_model_id:
        raise SpecError(f"{', '.join(orphans)} configure a draft model: give draft_model_id too")


def _check_cache_types(spec: ModelSpec) -> None:
    if spec.cache_quant_v and not spec.cache_quant:
        raise SpecError("cache_quant_v sets the V cache's type apart from cache_quant's: give cache_quant too")
    v_type = spec.cache_quant_v or spec.cache_quant
    if spec.flash_attention is False and v_type not in (None, "FP16"):
        raise SpecError(
            f"llama.cpp quantizes the V cache only with flash attention: with flash_attention=false give "
            f"cache_quant_v=FP16 (K alone as {spec.cache_quant}), or leave flash_attention out (on for a quantized V)"
        )


def _check_gpus(key: str, gpus: list[float] | None, spec: ModelSpec) -> None:
    if not gpus or not any(gpus):
        return
    if spec.backend == "embedding" and not spec.model_id.endswith(".gguf"):
        return  # torch, not llama.cpp, runs it: the worker checks that it sees a GPU
    import llama_cpp  # only needed for this check

    if not llama_cpp.llama_supports_gpu_offload():
        raise SpecError(
            f"'{key}' puts the model on GPUs, but the installed llama.cpp runs on CPUs only: install "
            f"llama-cpp-python with CUDA (README, 'GPUs'), or leave out '{key}' or give 0"
        )
    if len(gpus) > llama_cpp.LLAMA_MAX_DEVICES:
        raise SpecError(f"'{key}' lists {len(gpus)} GPUs; this llama.cpp takes at most {llama_cpp.LLAMA_MAX_DEVICES}")


def _locate_draft(draft_model_id: str, config: dict[str, ModelSpec]) -> str:
    """A draft model given as a config name, a GGUF file or folder, or the bundled model -> its GGUF path."""
    if draft_model_id in config:
        draft_model_id = config[draft_model_id].model_id
    path, backend, _ = _locate(draft_model_id)
    if backend != "llama_cpp":
        raise SpecError(f"draft_model_id '{draft_model_id}' is not a GGUF model")
    return str(path)


def resolve(spec: ModelSpec, config: dict[str, ModelSpec], defaults: dict[str, Any] | None = None) -> ModelSpec:
    """A spec with model_id an absolute path and model_name, backend, model_type and max_sequences filled in.

    Precedence: the spec's own keys, then the config entry its model_id names, then `defaults` (CLI flags).
    """
    given = spec.model_dump(exclude_unset=True, exclude_none=True)
    merged: dict[str, Any] = dict(defaults or {})
    default_name = None
    if spec.model_id in config:
        default_name = spec.model_id
        merged.update(config[spec.model_id].model_dump(exclude_unset=True, exclude_none=True))
        given.pop("model_id")
    merged.update(given)
    path, implied_backend, located_name = _locate(merged["model_id"])
    merged["model_id"] = str(path)
    merged.setdefault("model_name", default_name or located_name)
    if merged.get("model_type") == "embedding":
        merged.setdefault("backend", "embedding")
    merged.setdefault("backend", implied_backend)
    merged.setdefault("model_type", "embedding" if merged["backend"] == "embedding" else "llm")
    merged.setdefault("max_sequences", DEFAULT_MAX_SEQUENCES)
    if merged.get("draft_model_id"):
        merged["draft_model_id"] = _locate_draft(merged["draft_model_id"], config)
    if merged.get("chat_template"):
        template = Path(merged["chat_template"]).expanduser()
        if not template.is_file():
            raise SpecError(f"chat_template: no such file: {template}")
        merged["chat_template"] = str(template.resolve())
    resolved = spec_from_dict(merged, where=merged["model_name"])
    _check_backend(resolved)
    if resolved.backend == "llama_cpp" and resolved.model_type == "embedding":
        raise SpecError("model_type=embedding needs backend=embedding")
    return resolved.model_copy(update={"cache_size": kv_cache_tokens(resolved)})


def kv_cache_tokens(spec: ModelSpec) -> int | None:
    """cache_size, or max_seq_len times the sequences that each get that much; both must agree."""
    if spec.max_seq_len is None:
        return spec.cache_size
    wanted = spec.max_seq_len * (1 if spec.unified_kv else spec.max_sequences or DEFAULT_MAX_SEQUENCES)
    if spec.cache_size is not None and spec.cache_size != wanted:
        raise SpecError(
            f"cache_size={spec.cache_size} does not give max_seq_len={spec.max_seq_len} to each of "
            f"{spec.max_sequences} sequences (that needs cache_size={wanted}); give one of the two"
        )
    return wanted
