"""The llama.cpp engines have what their interfaces promise the serving side (checked without a model)."""

from __future__ import annotations

import inspect

import pytest

from gallama.engines.base import Engine
from gallama.engines.embedding.base import EmbeddingEngine
from gallama.engines.embedding.llama_cpp import LlamaCppEmbeddingEngine
from gallama.engines.llama_cpp.engine import LlamaCppEngine


def members(protocol) -> set[str]:
    """The methods and properties a protocol declares (its data attributes are set per instance)."""
    return {name for name, value in vars(protocol).items()
            if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property))}


@pytest.mark.parametrize("engine, protocol", [(LlamaCppEngine, Engine), (LlamaCppEmbeddingEngine, EmbeddingEngine)])
def test_llama_cpp_engines_implement_their_interface(engine, protocol):
    assert members(protocol) and not {name for name in members(protocol) if not hasattr(engine, name)}

