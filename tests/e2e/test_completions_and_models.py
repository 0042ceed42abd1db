"""Legacy /v1/completions, /v1/models and /tokenize through the openai client."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import DEFAULT_MODEL

PROMPT = "The capital of France is"


def test_models_list_and_retrieve(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [DEFAULT_MODEL]
    card = client.models.retrieve(DEFAULT_MODEL)
    assert card.id == DEFAULT_MODEL and card.object == "model"


def test_unknown_model_is_answered_by_the_default_model(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")  # the model card itself does not exist
    assert caught.value.body["code"] == "model_not_found"
    reply = client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.model == DEFAULT_MODEL  # who answered
    reply = client.completions.create(model="gpt-4o-mini", prompt=PROMPT, max_tokens=2)
    assert reply.model == DEFAULT_MODEL


def test_completion_max_tokens_defaults_to_16_even_when_null(client):
    banned = {str(t): -100 for t in (0, 2, 4)}  # SmolLM2's end tokens: the default length must show
    for extra in ({}, {"max_tokens": None}):
        response = client.completions.create(model=DEFAULT_MODEL, prompt=PROMPT, temperature=0, logit_bias=banned, **extra)
        assert response.usage.completion_tokens == 16 and response.choices[0].finish_reason == "length"


def test_completion_basic(client):
    response = client.completions.create(model=DEFAULT_MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    assert response.object == "text_completion"
    assert response.choices[0].text
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= 8


def test_completion_echo_and_list_prompt(client):
    response = client.completions.create(
        model=DEFAULT_MODEL, prompt=[PROMPT, "One, two, three,"], max_tokens=4, temperature=0, echo=True
    )
    assert [c.index for c in response.choices] == [0, 1]
    assert response.choices[0].text.startswith(PROMPT)
    assert response.choices[1].text.startswith("One, two, three,")


def test_completion_token_prompt_matches_text_prompt(client, http):
    tokens = http.post("/tokenize", json={"model": DEFAULT_MODEL, "content": PROMPT}).json()["tokens"]
    by_text = client.completions.create(model=DEFAULT_MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    by_tokens = client.completions.create(model=DEFAULT_MODEL, prompt=tokens, max_tokens=8, temperature=0)
    assert by_text.choices[0].text == by_tokens.choices[0].text
    detok = http.post("/detokenize", json={"model": DEFAULT_MODEL, "tokens": tokens}).json()["content"]
    assert detok == PROMPT


def test_completion_logprobs(client):
    response = client.completions.create(model=DEFAULT_MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert "".join(logprobs.tokens) == response.choices[0].text
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset == sorted(logprobs.text_offset)


def test_completion_streaming_matches(client):
    expected = client.completions.create(model=DEFAULT_MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    chunks = list(
        client.completions.create(
            model=DEFAULT_MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected.choices[0].text
    assert chunks[-1].usage.completion_tokens == expected.usage.completion_tokens


def test_completion_stop(client):
    full = client.completions.create(model=DEFAULT_MODEL, prompt="1, 2, 3,", max_tokens=12, temperature=0)
    assert " 5" in full.choices[0].text, full.choices[0].text
    cut = client.completions.create(model=DEFAULT_MODEL, prompt="1, 2, 3,", max_tokens=12, temperature=0, stop=" 5")
    assert cut.choices[0].text == full.choices[0].text.split(" 5")[0]
    assert cut.choices[0].finish_reason == "stop"


def test_embeddings_without_an_embedding_model_say_how_to_get_one(http):
    response = http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hi"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert f"No embedding model is loaded to answer instead. Served: {DEFAULT_MODEL} (llm)." in error["message"]
    assert "pip install 'gallama[embedding]'" in error["message"] and "model_type=embedding" in error["message"]
