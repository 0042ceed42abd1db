"""The small interface every embedding backend implements.

An input is a text or a list of the model's token ids. The engine counts and
cuts inputs in its own tokens and returns L2-normalised vectors; it knows
nothing about OpenAI.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from gallama.engines.base import EngineCounters, ModelFacts

EmbeddingInput = str | list[int]


class EmbeddingEngine(Protocol):
    context_length: int  # the most tokens one input may have, special tokens included
    dimensions: int
    vocab_size: int

    def count_tokens(self, items: Sequence[EmbeddingInput]) -> list[int]: ...

    def truncate(self, item: EmbeddingInput, max_tokens: int) -> EmbeddingInput:
        """The input cut to its first max_tokens tokens (special tokens included)."""
        ...

    async def embed(self, items: Sequence[EmbeddingInput]) -> np.ndarray:
        """One L2-normalised float32 row per input."""
        ...

    def facts(self) -> ModelFacts: ...

    def counters(self) -> EngineCounters: ...

    def close(self) -> None: ...


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))
