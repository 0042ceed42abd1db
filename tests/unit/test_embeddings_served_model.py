"""The checks a served embedding model makes before it embeds, and the registry's typed lookups (fake engine)."""

from __future__ import annotations

import numpy as np
import pytest

from gallama.engines.base import EngineCounters
from gallama.protocol.errors import InvalidRequest
from gallama.serving.registry import ModelRegistry
from gallama.serving.served_embedding_model import ServedEmbeddingModel


class FakeEngine:
    """One token per character; the vector is the input's length, then ones."""

    model_path = "fake"
    context_length = 8
    dimensions = 4
    vocab_size = 100

    def __init__(self):
        self.embedded = []

    def count_tokens(self, items):
        return [len(item) for item in items]

    def truncate(self, item, max_tokens):
        return item[:max_tokens]

    async def embed(self, items):
        self.embedded.append(list(items))
        return np.array([[len(item), 1, 1, 1] for item in items], dtype=np.float32)

    def counters(self):
        return EngineCounters(queue_depth=0, running_sequences=0)

    def close(self):
        pass


def served(allows_dimensions=False):
    return ServedEmbeddingModel(name="emb", engine=FakeEngine(), allows_dimensions=allows_dimensions)


async def test_counts_tokens_of_every_input():
    model = served()
    result = await model.embed(["abc", [1, 2]])
    assert result.prompt_tokens == 5
    assert result.vectors.shape == (2, 4)


async def test_too_long_input_is_rejected_unless_truncation_is_asked():
    model = served()
    with pytest.raises(InvalidRequest, match="input 1 has 9 tokens") as error:
        await model.embed(["ok", "x" * 9])
    assert error.value.param == "input"
    result = await model.embed(["ok", "x" * 9], truncate_to=-1)
    assert model.engine.embedded[-1] == ["ok", "x" * 8]
    assert result.prompt_tokens == 10
    await model.embed(["abcdef"], truncate_to=3)
    assert model.engine.embedded[-1] == ["abc"]


async def test_truncation_beyond_the_model_limit_is_rejected():
    with pytest.raises(InvalidRequest) as error:
        await served().embed(["a"], truncate_to=9)
    assert error.value.param == "truncate_prompt_tokens"


async def test_token_ids_outside_the_vocabulary():
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        await served().embed([[1, 100]])


async def test_dimensions_only_where_the_model_allows_them():
    with pytest.raises(InvalidRequest, match="does not support the 'dimensions'") as error:
        await served().embed(["a"], dimensions=2)
    assert error.value.param == "dimensions"
    with pytest.raises(InvalidRequest, match="between 1 and 4"):
        await served(allows_dimensions=True).embed(["a"], dimensions=5)
    result = await served(allows_dimensions=True).embed(["abc"], dimensions=2)
    assert result.vectors.shape == (1, 2)
    assert np.allclose(result.vectors[0], np.array([3, 1]) / np.sqrt(10))


class ChatModel:
    name = "chat"


def test_registry_lookups_by_kind():
    registry = ModelRegistry()
    chat, embedding = ChatModel(), served()
    registry.add(chat)
    registry.add(embedding)
    assert registry.get("chat") is chat
    assert registry.get_embedding("emb") is embedding
    assert registry.find("emb") is embedding
    with pytest.raises(InvalidRequest, match="is a chat model") as error:
        registry.get_embedding("chat")
    assert error.value.param == "model"
    with pytest.raises(InvalidRequest, match="is an embedding model"):
        registry.get("emb")


def test_plain_serve_adds_the_default_embedding_model_only_without_ids():
    from gallama.cli import _cli_specs
    from gallama.config import default_embedding_model_available

    plain = [(spec.model_id, spec.model_name) for spec in _cli_specs(None, None, [])]
    assert plain[0] == ("SmolLM2-135M-Instruct", None)
    assert [name for _, name in plain[1:]] == (["all-MiniLM-L6-v2"] if default_embedding_model_available() else [])
    assert [spec.model_id for spec in _cli_specs(None, None, ["model_id=x"])] == ["x"]


def test_a_full_queue_is_429_with_retry_after():
    from fastapi.testclient import TestClient

    from gallama.engines.base import EngineOverloaded
    from gallama.server.app import create_app

    class FullEngine(FakeEngine):
        async def embed(self, items):
            raise EngineOverloaded(retry_after_s=2)

    registry = ModelRegistry()
    registry.add(ServedEmbeddingModel(name="emb", engine=FullEngine()))
    response = TestClient(create_app(registry)).post("/v1/embeddings", json={"model": "emb", "input": "hi"})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
