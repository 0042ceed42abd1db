"""A loaded embedding model: its engine plus the request checks of /v1/embeddings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from gallama.engines.embedding.base import EmbeddingEngine, EmbeddingInput, l2_normalize
from gallama.protocol.errors import InvalidRequest, check_token_ids


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
            if not isinstance(item, str):
                check_token_ids(item, self.engine.vocab_size, "input", f"input {index}")
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
