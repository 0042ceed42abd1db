"""A loaded embedding model: its engine plus the request checks of /v1/embeddings."""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from gallama.bundled_models import DEFAULT_EMBEDDING_MODEL, BundledModelMissing, locate
from gallama.engines.embedding.base import EmbeddingEngine, EmbeddingInput, l2_normalize
from gallama.protocol.errors import InvalidRequest

if TYPE_CHECKING:
    from gallama.config import ModelSpec

# What the sentence-transformers backend needs (the `embedding` extra).
INFINITY_MODULES = ("infinity_emb", "torch", "sentence_transformers")


@dataclass
class Embeddings:
    vectors: np.ndarray  # one L2-normalised row per input
    prompt_tokens: int


@dataclass
class ServedEmbeddingModel:
    name: str
    engine: EmbeddingEngine
    # Only Matryoshka-trained models keep their meaning when cut to fewer dimensions.
    allows_dimensions: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    async def embed(
        self, inputs: Sequence[EmbeddingInput], *, truncate_to: int | None = None, dimensions: int | None = None
    ) -> Embeddings:
        """Checks and embeds the inputs; a client mistake raises InvalidRequest naming the parameter.

        truncate_to: cut each input to this many tokens (-1: the model's limit)
        instead of rejecting inputs that are too long.
        """
        self.check_dimensions(dimensions)
        limit = self.token_limit(truncate_to)
        for index, item in enumerate(inputs):
            if not isinstance(item, str) and any(not 0 <= t < self.engine.vocab_size for t in item):
                raise InvalidRequest(
                    f"input {index} has a token id outside the vocabulary of '{self.name}' (size {self.engine.vocab_size})",
                    param="input",
                )
        items = list(inputs)
        counts = self.engine.count_tokens(items)
        for index, count in enumerate(counts):
            if count <= limit:
                continue
            if truncate_to is None:
                raise InvalidRequest(
                    f"input {index} has {count} tokens, more than the {limit} that '{self.name}' takes; "
                    "shorten it or set truncate_prompt_tokens to cut it",
                    param="input", code="context_length_exceeded",
                )
            items[index], counts[index] = self.engine.truncate(items[index], limit), limit
        total = sum(counts)
        vectors = await self.engine.embed(items)
        if dimensions is not None:
            vectors = l2_normalize(vectors[:, :dimensions])
        return Embeddings(vectors, total)

    def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None:
            return
        if not self.allows_dimensions:
            raise InvalidRequest(
                f"'{self.name}' does not support the 'dimensions' parameter (it is not a Matryoshka model); "
                f"leave it out to get its {self.engine.dimensions}-dimensional vectors",
                param="dimensions",
            )
        if not 1 <= dimensions <= self.engine.dimensions:
            raise InvalidRequest(
                f"dimensions must lie between 1 and {self.engine.dimensions} for '{self.name}'", param="dimensions"
            )

    def token_limit(self, truncate_to: int | None) -> int:
        if truncate_to is None or truncate_to == -1:
            return self.engine.context_length
        if truncate_to > self.engine.context_length:
            raise InvalidRequest(
                f"truncate_prompt_tokens={truncate_to} is more than the {self.engine.context_length} tokens "
                f"that '{self.name}' takes",
                param="truncate_prompt_tokens",
            )
        return truncate_to

    def close(self) -> None:
        self.engine.close()


def default_embedding_model_available() -> bool:
    """Whether `gallama serve` can serve the bundled all-MiniLM-L6-v2: the embedding extra is installed."""
    if any(importlib.util.find_spec(module) is None for module in INFINITY_MODULES):
        return False
    try:
        locate(DEFAULT_EMBEDDING_MODEL)
    except BundledModelMissing:
        return False
    return True


def default_embedding_specs() -> list["ModelSpec"]:
    """The bundled all-MiniLM-L6-v2 that a plain `gallama serve` adds, when the embedding extra is installed."""
    if not default_embedding_model_available():
        return []
    from gallama.config import ModelSpec

    return [ModelSpec(model_id=str(locate(DEFAULT_EMBEDDING_MODEL)), model_name=DEFAULT_EMBEDDING_MODEL.name)]


def default_threads() -> int:
    """All cores but one, which is left to the HTTP side (tokenizing, JSON, the front).

    A forward pass waits on its slowest thread: on a busy 2-core machine one
    sentence took 950 ms with 2 torch threads and 30 ms with 1.
    """
    return max(1, (os.cpu_count() or 1) - 1)


def load_embedding_model(spec: "ModelSpec") -> ServedEmbeddingModel:
    """A GGUF file embeds through llama.cpp (pooled); a sentence-transformers folder through Infinity."""
    path = Path(spec.model_id)
    threads = spec.threads or default_threads()
    if path.suffix == ".gguf":
        from gallama.engines.embedding.llama_cpp import LlamaCppEmbeddingEngine

        engine = LlamaCppEmbeddingEngine(str(path), n_threads=threads, gpus=spec.gpus)
    else:
        from gallama.engines.embedding.infinity import InfinityEmbeddingEngine

        engine = InfinityEmbeddingEngine(str(path), n_threads=threads, gpus=spec.gpus)
    return ServedEmbeddingModel(name=spec.model_name or path.stem, engine=engine)
