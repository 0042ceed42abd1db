"""/v1/chat/completions against the real server and model, through the official openai client."""

from __future__ import annotations

import asyncio
import json
import math
import time

import httpx

from tests.conftest import DEFAULT_MODEL

HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]


def greedy(client, messages=HELLO, **kwargs):
    return client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, temperature=0, **kwargs)


def test_response_shape_and_usage(client):
    response = greedy(client, max_tokens=24)
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.model == DEFAULT_MODEL
    assert response.system_fingerprint
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 5
    assert 0 < response.usage.completion_tokens <= 24
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_usage_counts_the_prompt_tokens_served_from_cache(client):
    messages = [{"role": "user", "content": "Name three rivers in Europe and one fact about each of them."}]
    first = greedy(client, messages=messages, max_tokens=4)
    again = greedy(client, messages=messages, max_tokens=4)
    other = greedy(client, messages=[{"role": "user", "content": "Zebras?"}], max_tokens=4)
    # The repeat finds all of its prompt in the cache, and the logits that followed it kept from the first time.
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens
    assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens - 2
    # Another question shares only the chat template's opening with it.
    assert other.usage.prompt_tokens_details.cached_tokens < other.usage.prompt_tokens - 3


def test_max_tokens_gives_length(client):
    response = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Count from 1 to 100."}], max_tokens=5, temperature=0
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 5


def test_max_completion_tokens_is_honoured(client):
    response = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=HELLO, max_completion_tokens=3, temperature=0
    )
    assert response.usage.completion_tokens == 3


def test_greedy_is_deterministic(client):
    assert greedy(client, max_tokens=30).choices[0].message.content == greedy(client, max_tokens=30).choices[0].message.content


def test_same_seed_same_output(client):
    def sample(seed):
        return client.chat.completions.create(
            model=DEFAULT_MODEL, messages=HELLO, max_tokens=30, temperature=1.0, seed=seed
        ).choices[0].message.content

    assert sample(1234) == sample(1234)


def test_stop_string_cuts_output(client):
    full = greedy(client, max_tokens=40).choices[0].message.content
    words = full.split()
    assert len(words) > 4, full
    stop = words[3]
    response = greedy(client, max_tokens=40, stop=[stop])
    text = response.choices[0].message.content
    assert stop not in text
    assert full.startswith(text)
    assert response.choices[0].finish_reason == "stop"


def test_n_choices(client):
    response = client.chat.completions.create(model=DEFAULT_MODEL, messages=HELLO, max_tokens=8, n=3, seed=7)
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert all(c.message.content for c in response.choices)
    assert response.usage.completion_tokens == sum(
        8 if c.finish_reason == "length" else 0 for c in response.choices
    ) or response.usage.completion_tokens > 0


def test_logprobs(client):
    response = greedy(client, max_tokens=6, logprobs=True, top_logprobs=3)
    entries = response.choices[0].logprobs.content
    assert len(entries) == response.usage.completion_tokens - (response.choices[0].finish_reason == "stop")
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy decoding picks the most likely token.
        assert entry.top_logprobs[0].token == entry.token
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, abs_tol=1e-6)
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token


def test_logit_bias_bans_a_token(client, http):
    first = greedy(client, max_tokens=1).choices[0].message.content
    tokens = http.post("/tokenize", json={"model": DEFAULT_MODEL, "content": first}).json()["tokens"]
    assert len(tokens) == 1
    response = greedy(client, max_tokens=1, logit_bias={str(tokens[0]): -100})
    assert response.choices[0].message.content != first


def test_presence_and_penalty_params_change_sampling(client):
    plain = greedy(client, max_tokens=40).choices[0].message.content
    penalised = greedy(client, max_tokens=40, frequency_penalty=2.0, presence_penalty=2.0).choices[0].message.content
    assert plain != penalised


def test_extras_top_k_min_p_repetition_penalty(client):
    response = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=HELLO,
        max_tokens=10,
        temperature=0.8,
        seed=3,
        extra_body={"top_k": 1, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    # top_k=1 makes sampling greedy (on penalised logits), so a second run agrees.
    again = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=HELLO,
        max_tokens=10,
        temperature=0.8,
        seed=99,
        extra_body={"top_k": 1, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert response.choices[0].message.content == again.choices[0].message.content


def test_content_parts_and_developer_role(client):
    parts = greedy(
        client,
        messages=[
            {"role": "developer", "content": "You answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "Write one sentence "}, {"type": "text", "text": "about the sea."}]},
        ],
        max_tokens=12,
    )
    plain = greedy(
        client,
        messages=[
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Write one sentence about the sea."},
        ],
        max_tokens=12,
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content


def test_multi_turn_with_tool_role_history(client):
    response = greedy(
        client,
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Name a colour."},
        ],
        max_tokens=8,
    )
    assert response.choices[0].message.content


def test_streaming_matches_non_streaming(client):
    expected = greedy(client, max_tokens=30).choices[0].message.content
    stream = greedy(client, max_tokens=30, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)


def test_stream_helper_assembles_message(client):
    expected = greedy(client, max_tokens=200)
    assert expected.choices[0].finish_reason == "stop"  # the helper refuses to parse a cut-off answer
    with client.beta.chat.completions.stream(
        model=DEFAULT_MODEL, messages=HELLO, max_tokens=200, temperature=0
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == expected.choices[0].message.content


def test_sse_framing(http):
    body = {"model": DEFAULT_MODEL, "messages": HELLO, "max_tokens": 4, "stream": True, "temperature": 0}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [block for block in raw.split("\n\n") if block]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        json.loads(event[len("data: "):])


def test_a_one_model_server_runs_its_model_in_its_own_process(server, http, client):
    """No worker process between the client and the engine (router.local_instance): the instance's pid is
    the server's, and a stream comes on the client's keep-alive connection like any response."""
    model = next(m for m in http.get("/health").json()["models"] if m["id"] == DEFAULT_MODEL)
    assert [instance["pid"] for instance in model["instances"]] == [server.process.pid]
    body = {"model": DEFAULT_MODEL, "messages": HELLO, "max_tokens": 4, "stream": True, "temperature": 0}
    with http.stream("POST", "/v1/chat/completions", json=body, headers={"x-request-id": "local-1"}) as response:
        raw = response.read().decode()
    assert response.headers["x-request-id"] == "local-1" and "connection" not in response.headers
    assert raw.endswith("data: [DONE]\n\n")
    plain = http.post("/v1/chat/completions", json={**body, "stream": False})
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**body))
    assert streamed == plain.json()["choices"][0]["message"]["content"]


async def test_async_concurrent_greedy_matches_alone(async_client, client):
    alone = greedy(client, max_tokens=24).choices[0].message.content
    responses = await asyncio.gather(
        *[
            async_client.chat.completions.create(model=DEFAULT_MODEL, messages=HELLO, max_tokens=24, temperature=0)
            for _ in range(4)
        ]
    )
    assert [r.choices[0].message.content for r in responses] == [alone] * 4


def test_disconnect_stops_generation(server, http):
    eos = http.post("/tokenize", json={"model": DEFAULT_MODEL, "content": "<|im_end|>"}).json()["tokens"]
    # With the end token banned the answer would run for 1500 tokens unless stopped.
    body = {"model": DEFAULT_MODEL, "messages": HELLO, "max_tokens": 1500, "stream": True,
            "logit_bias": {str(eos[0]): -100}}
    with httpx.Client(base_url=server.base_url, timeout=30) as session:
        with session.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        model = http.get("/health").json()["models"][0]
        if model["running"] == 0:
            break
        time.sleep(0.05)
    assert model["running"] == 0, model
