"""The embedding backend: a GGUF file pooled by llama.cpp, a sentence-transformers folder through Infinity."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import TYPE_CHECKING

from gallama.engines.backend import Backend
from gallama.engines.llama_cpp.backend import check_gpus, quiet_llama_cpp

if TYPE_CHECKING:
    from gallama.config import ModelSpec
    from gallama.engines.embedding.base import EmbeddingEngine

KEYS = frozenset({"gpus", "threads"})
# What the sentence-transformers engine needs (the `embedding` extra).
INFINITY_MODULES = ("infinity_emb", "torch", "sentence_transformers")


def is_gguf(spec: ModelSpec) -> bool:
    return spec.model_id.endswith(".gguf")


def check(spec: ModelSpec) -> ModelSpec:
    return spec


def check_devices(spec: ModelSpec) -> None:
    if is_gguf(spec):
        check_gpus("gpus", spec.gpus)  # torch, not llama.cpp, runs a folder: its engine checks that it sees a GPU


def infinity_available() -> bool:
    return all(importlib.util.find_spec(module) is not None for module in INFINITY_MODULES)


def default_threads() -> int:
    """All cores but one, which is left to the HTTP side (tokenizing, JSON, the front).

    A forward pass waits on its slowest thread: on a busy 2-core machine one
    sentence took 950 ms with 2 torch threads and 30 ms with 1.
    """
    return max(1, (os.cpu_count() or 1) - 1)


def load(spec: ModelSpec) -> EmbeddingEngine:
    threads = spec.threads or default_threads()
    if is_gguf(spec):
        quiet_llama_cpp()
        from gallama.engines.embedding.llama_cpp import LlamaCppEmbeddingEngine

        return LlamaCppEmbeddingEngine(spec.model_id, n_threads=threads, gpus=spec.gpus)
    # The model is a local folder: never reach for the hub, never send usage stats. Set before
    # the import: these packages read them when they load.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("INFINITY_ANONYMOUS_USAGE_STATS", "0")
    for name in ("infinity_emb", "sentence_transformers"):  # one INFO line per load step otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    from gallama.engines.embedding.infinity import InfinityEmbeddingEngine

    return InfinityEmbeddingEngine(spec.model_id, n_threads=threads, gpus=spec.gpus)


EMBEDDING = Backend(name="embedding", kind="embedding", keys=KEYS, check=check, check_devices=check_devices, load=load)
