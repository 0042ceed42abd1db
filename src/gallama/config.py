"""Model specs: the `-id "k=v ..."` strings, `model_config.yaml`, and resolving a spec to a loadable file."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gallama.bundled_models import DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL, BundledModelMissing, locate
from gallama.engines.backend import UnsupportedSpec
from gallama.engines.embedding.backend import infinity_available
from gallama.engines.registry import BACKEND_NAMES, backend_named

CONFIG_FILE = "model_config.yaml"
CacheQuant = Literal["FP16", "Q8", "Q6", "Q4"]
BackendName = Literal[BACKEND_NAMES]


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


# Resources a spec asks of Ray in its own keys (threads, gpus); Ray refuses them as custom resource names.
RAY_BUILTIN_RESOURCES = {"CPU": "threads", "GPU": "gpus", "memory": None, "object_store_memory": None}


def _resource_map(value: Any) -> Any:
    """`"name:amount,..."` -> {name: amount}; a mapping (YAML, JSON) passes as it is."""
    if not isinstance(value, str):
        return value
    resources: dict[str, str] = {}
    for part in filter(str.strip, value.split(",")):
        name, sep, amount = part.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"'{part}' is not name:amount")
        resources[name.strip()] = amount.strip()
    return resources


class ModelSpec(BaseModel):
    """One model instance, in the keys of `-id`, `model_config.yaml` and `POST /add_model`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str = Field(min_length=1)
    model_name: str | None = Field(default=None, min_length=1)
    model_type: Literal["llm", "embedding"] | None = None
    backend: BackendName | None = None
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
    # context: see engines/llama_cpp/setup.py), llama.cpp's choice (on) with GPU layers.
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
    # Custom node resources a Ray-placed instance needs (serve --ray), e.g. the node that holds its files.
    ray_resources: dict[str, float] | None = None
    # The output budget of a request that sets none (llama-server's --n-predict); default: the rest of the context.
    default_max_tokens: int | None = Field(default=None, gt=0)
    # The weights' and KV cache's type (transformers backend); auto: bfloat16 on a GPU, float32 on a CPU.
    dtype: Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] | None = None

    _split_gpus = field_validator("gpus", "draft_gpus", mode="before")(_gpu_list)
    # The original gallama's README spells them exLlama, Llama_cpp, fp16, q8: users copy those.
    _lower_names = field_validator("backend", "model_type", "draft_mode", "dtype", mode="before")(_lower)
    _upper_quants = field_validator("cache_quant", "cache_quant_v", "draft_cache_quant", mode="before")(_upper)
    _parse_resources = field_validator("ray_resources", mode="before")(_resource_map)

    @field_validator("gpus", "draft_gpus")
    @classmethod
    def _non_negative(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(gb < 0 for gb in value):
            raise ValueError("GB of VRAM per GPU cannot be negative")
        return value

    @field_validator("ray_resources")
    @classmethod
    def _custom_resources(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for name, amount in (value or {}).items():
            if name in RAY_BUILTIN_RESOURCES:
                key = RAY_BUILTIN_RESOURCES[name]
                raise ValueError(f"'{name}' is not a custom resource" + (f": give '{key}'" if key else ""))
            if amount <= 0:
                raise ValueError(f"the amount of '{name}' must be positive")
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
#
# ray: auto    # place every instance on a Ray cluster (as `serve --ray auto`); not a model name
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


RAY_KEY = "ray"  # the config file's one key that is not a model: the Ray cluster to place instances on


def _read_config(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise SpecError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} must map model names to specs")
    return data


def load_config(path: Path | None = None) -> dict[str, ModelSpec]:
    path = path or config_path()
    data = _read_config(path)
    data.pop(RAY_KEY, None)
    return {str(name): spec_from_dict(entry, where=f"{path}: {name}") for name, entry in data.items()}


def configured_ray_address(path: Path | None = None) -> str | None:
    """The config file's `ray: ADDRESS`, the default of `serve --ray`."""
    path = path or config_path()
    address = _read_config(path).get(RAY_KEY)
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise SpecError(f"{path}: '{RAY_KEY}' is the address of a Ray cluster (auto, or HOST:PORT), not {address!r}")
    return address


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
        if gguf is not None:
            return gguf.resolve(), "llama_cpp", name
        if (path / "config.json").is_file():  # a Hugging Face model folder
            return path.resolve(), "transformers", name
        raise SpecError(f"{path} holds no GGUF file, no config.json and no sentence-transformers model")
    raise SpecError(
        f"model_id '{model_id}' is not a name in {config_path()}, a GGUF file, a model folder, "
        f"or the bundled {DEFAULT_CHAT_MODEL.name}"
    )


def _locate_draft(draft_model_id: str, config: dict[str, ModelSpec]) -> str:
    """A draft model given as a config name, a GGUF file or folder, or the bundled model -> its GGUF path."""
    if draft_model_id in config:
        draft_model_id = config[draft_model_id].model_id
    path, backend, _ = _locate(draft_model_id)
    if backend != "llama_cpp":
        raise SpecError(f"draft_model_id '{draft_model_id}' is not a GGUF model")
    return str(path)


def resolve(spec: ModelSpec, config: dict[str, ModelSpec], defaults: dict[str, Any] | None = None) -> ModelSpec:
    """A spec with model_id an absolute path and model_name, backend, model_type and the backend's own
    derived keys filled in, checked by its backend.

    Precedence: the spec's own keys, then the config entry its model_id names, then `defaults` (CLI flags).
    A key the spec or its entry gives that the backend does not take is an error; a flag it does not take
    is not its default.
    """
    chosen = spec.model_dump(exclude_unset=True, exclude_none=True)
    default_name = None
    if spec.model_id in config:
        default_name = spec.model_id
        chosen = {**config[spec.model_id].model_dump(exclude_unset=True, exclude_none=True),
                  **{key: value for key, value in chosen.items() if key != "model_id"}}
    path, implied_backend, located_name = _locate(chosen["model_id"])
    name = chosen.get("backend") or ("embedding" if chosen.get("model_type") == "embedding" else implied_backend)
    try:
        backend = backend_named(name)
        backend.refuse_foreign_keys(chosen)
    except UnsupportedSpec as error:
        raise SpecError(str(error)) from None
    merged = {key: value for key, value in (defaults or {}).items() if key in backend.keys}
    merged.update(chosen)
    merged["model_id"] = str(path)
    merged.setdefault("model_name", default_name or located_name)
    merged.setdefault("backend", name)
    merged.setdefault("model_type", backend.kind)
    if merged.get("draft_model_id"):
        merged["draft_model_id"] = _locate_draft(merged["draft_model_id"], config)
    if merged.get("chat_template"):
        template = Path(merged["chat_template"]).expanduser()
        if not template.is_file():
            raise SpecError(f"chat_template: no such file: {template}")
        merged["chat_template"] = str(template.resolve())
    resolved = spec_from_dict(merged, where=merged["model_name"])
    if resolved.model_type != backend.kind:
        raise SpecError(f"model_type={resolved.model_type} needs a backend for such models: "
                        f"the {backend.name} backend serves {backend.kind} models")
    try:
        resolved = backend.check(resolved)
        backend.check_devices(resolved)
    except UnsupportedSpec as error:
        raise SpecError(str(error)) from None
    return resolved


# -- what a plain `gallama serve` serves ---------------------------------------


def default_embedding_model_available() -> bool:
    """Whether `gallama serve` can serve the bundled all-MiniLM-L6-v2: the embedding extra is installed."""
    if not infinity_available():
        return False
    try:
        locate(DEFAULT_EMBEDDING_MODEL)
    except BundledModelMissing:
        return False
    return True


def default_embedding_specs() -> list[ModelSpec]:
    """The bundled all-MiniLM-L6-v2 that a plain `gallama serve` adds, when the embedding extra is installed."""
    if not default_embedding_model_available():
        return []
    return [ModelSpec(model_id=str(locate(DEFAULT_EMBEDDING_MODEL)), model_name=DEFAULT_EMBEDDING_MODEL.name)]
