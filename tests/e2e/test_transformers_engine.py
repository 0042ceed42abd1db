"""The transformers engine behind `gallama serve`: the bundled SmolLM2 GGUF, dequantized by transformers.

Short answers: on 2 shared cores the model's forward pass through torch costs far more than llama.cpp's.
"""

from __future__ import annotations

import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEFAULT_MODEL, start_server, stop_server

MISSING = [name for name in ("torch", "transformers", "gguf", "accelerate") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"the transformers extra is not installed (missing: {', '.join(MISSING)})")

PROMPTS = ["What is the capital of France?", "Name three colors.", "Count from one to five."]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(
        str(tmp_path_factory.mktemp("transformers")), "-id", f"model_id={DEFAULT_MODEL} backend=transformers",
        "--max-sequences", "4", timeout_s=600,
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def api(server):
    return openai.OpenAI(base_url=server.api_url, api_key="none", max_retries=0, timeout=600)


def greedy(api, prompt: str, max_tokens: int = 12) -> str:
    answer = api.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens)
    return answer.choices[0].message.content


def test_chat_answers(api):
    answer = api.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": PROMPTS[0]}], temperature=0, max_tokens=12)
    assert "Paris" in answer.choices[0].message.content
    assert answer.usage.completion_tokens <= 12


def test_a_stream_gives_the_greedy_answer(api):
    chunks = api.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": PROMPTS[1]}], temperature=0, max_tokens=12,
        stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed and streamed == greedy(api, PROMPTS[1])


def test_greedy_answers_are_the_same_alone_and_batched(api):
    alone = [greedy(api, prompt) for prompt in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda prompt: greedy(api, prompt), PROMPTS))
    assert together == alone


def test_a_required_tool_call_follows_the_schema(api):
    answer = api.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=40)
    calls = answer.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)


def test_json_schema_output_is_valid(api):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    answer = api.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Describe a person as JSON."}], temperature=0,
        max_tokens=40, response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    person = json.loads(answer.choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)


def model_metrics(server) -> dict[str, float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=60).text
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.labels.get("model") == DEFAULT_MODEL and "le" not in sample.labels}


def test_metrics_count_its_tokens_and_report_its_engine_gauges(server, api):
    before = model_metrics(server)
    answer = api.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": PROMPTS[2]}], temperature=0, max_tokens=6)
    after = model_metrics(server)
    generated = after["gallama_generated_tokens_total"] - before.get("gallama_generated_tokens_total", 0)
    assert generated == answer.usage.completion_tokens
    assert after["gallama_queue_depth"] == 0 and after["gallama_running_sequences"] == 0
