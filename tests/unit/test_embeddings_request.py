"""The /v1/embeddings request model and the vector encodings."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from pydantic import ValidationError

from gallama.protocol.embeddings import MAX_INPUTS, EmbeddingRequest, encode_vector


@pytest.mark.parametrize(
    "given, inputs",
    [
        ("hello", ["hello"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_input_shapes(given, inputs):
    assert EmbeddingRequest(model="m", input=given).inputs() == inputs


@pytest.mark.parametrize(
    "given, message",
    [
        ("", "empty string"),
        ([], "empty list"),
        (["a", ""], "input 1 is empty"),
        ([[1], []], "input 1 is empty"),
        ([-1], "greater than or equal to 0"),
        (["x"] * (MAX_INPUTS + 1), f"at most {MAX_INPUTS}"),
    ],
)
def test_bad_inputs(given, message):
    with pytest.raises(ValidationError, match=message):
        EmbeddingRequest(model="m", input=given)


@pytest.mark.parametrize(
    "patch",
    [{"encoding_format": "int8"}, {"dimensions": 0}, {"truncate_prompt_tokens": 0}, {"truncate_prompt_tokens": -2}, {"extra": 1}],
)
def test_bad_parameters(patch):
    with pytest.raises(ValidationError):
        EmbeddingRequest(model="m", input="x", **patch)


def test_base64_is_little_endian_float32():
    vector = np.array([0.5, -1.25, 3.0e-8], dtype=np.float32)
    decoded = np.frombuffer(base64.b64decode(encode_vector(vector, "base64")), dtype="<f4")
    assert np.array_equal(decoded, vector)
    assert encode_vector(vector, "float") == [0.5, -1.25, float(np.float32(3.0e-8))]
