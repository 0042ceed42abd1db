"""The /v1/embeddings request body, and the response's vector encodings."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator

from gallama.protocol.requests import StrictModel

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request

TokenIds = list[Annotated[int, Field(ge=0)]]


class EmbeddingRequest(StrictModel):
    model: str
    input: str | list[str] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    # vLLM's extra: cut each input to this many tokens (-1: the model's limit)
    # instead of rejecting a too long one.
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, str):
            if not value:
                raise ValueError("input must not be an empty string")
            return value
        if not value:
            raise ValueError("input must not be an empty list")
        if isinstance(value[0], int):
            return value
        if len(value) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs are allowed in one request")
        for index, item in enumerate(value):
            if len(item) == 0:
                raise ValueError(f"input {index} is empty")
        return value

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _not_zero(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("must be -1 (the model's limit) or at least 1")
        return value

    def inputs(self) -> list[str] | list[TokenIds]:
        """The inputs as a list: texts, or token id lists."""
        if isinstance(self.input, str) or (self.input and isinstance(self.input[0], int)):
            return [self.input]
        return list(self.input)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """`float`: a JSON list; `base64`: the little-endian float32 bytes, as OpenAI sends them."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(vector, dtype=np.float32).tolist()
