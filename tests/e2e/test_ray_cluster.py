"""serve --ray on a real Ray cluster of several nodes on this machine (Ray's own cluster_utils.Cluster):
placement by resources, one front for all, the cluster secret, node and worker deaths, add and remove."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import DEFAULT_MODEL, doomed_requests, free_port, start_server, stop_server

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'gallama[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

SMALL = "threads=1 max_sequences=2 cache_size=2048"
PINNED = "pinned"  # a second model, on node B only


def wait_until(predicate, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def cluster():
    # Node deaths are noticed in ~2 s instead of Ray's default ~30 s.
    cluster = Cluster(initialize_head=True, head_node_args={  # the front's node
        "num_cpus": 1, "resources": {"front_node": 10}, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4},
    })
    nodes = {
        "a": cluster.add_node(num_cpus=2, resources={"node_a": 10, "smol": 1}),
        "b": cluster.add_node(num_cpus=2, resources={"node_b": 10}),
    }
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def front_server(cluster, tmp_path_factory):
    address = cluster[0].address
    running = start_server(
        str(tmp_path_factory.mktemp("ray")), "--ray", address, "--strict-model-names",
        "-id", f"model_id={DEFAULT_MODEL} {SMALL} ray_resources=smol:1",
        "-id", f"model_id={DEFAULT_MODEL} model_name={PINNED} {SMALL} ray_resources=node_b:1",
        timeout_s=300,
    )
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def api(front_server):
    return OpenAI(base_url=front_server.api_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def front(front_server):
    with httpx.Client(base_url=front_server.base_url, timeout=120) as session:
        yield session


def instance(front, name):
    return next(m for m in front.get("/health").json()["models"] if m["id"] == name)["instances"][0]


def running(front, name):
    return next(m for m in front.get("/health").json()["models"] if m["id"] == name)["running"]


def test_instances_land_on_the_nodes_their_resources_name(cluster, front):
    _, nodes = cluster
    assert instance(front, DEFAULT_MODEL)["node"]["id"] == nodes["a"].node_id  # the only node with `smol`
    assert instance(front, PINNED)["node"]["id"] == nodes["b"].node_id
    cards = {card["id"]: card for card in front.get("/v1/models").json()["data"]}
    assert cards[PINNED]["nodes"] == [{"id": nodes["b"].node_id, "address": nodes["b"].node_ip_address}]


def test_both_models_answer_through_one_front(api, front):
    for name in (DEFAULT_MODEL, PINNED):
        reply = api.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert reply.model == name and reply.usage.completion_tokens >= 1
    # A stream from another node is relayed by the front.
    chunks = list(api.chat.completions.create(model=PINNED, messages=[{"role": "user", "content": "Count to five."}],
                                              max_tokens=12, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finish in (["stop"], ["length"]) and 1 <= chunks[-1].usage.completion_tokens <= 12
    # The front scrapes the workers' metrics with the secret too.
    assert f'model="{PINNED}"' in front.get("/metrics").text


def test_a_worker_refuses_requests_without_the_cluster_secret(front, front_server):
    worker = instance(front, PINNED)
    url = f"http://{worker['node']['address']}:{worker['port']}"
    refused = httpx.post(f"{url}/v1/chat/completions", json={"model": PINNED, "messages": [{"role": "user", "content": "Hi"}]})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "cluster_secret_required"
    guessed = httpx.get(f"{url}/health", headers={"x-gallama-cluster-secret": "guess"})
    assert guessed.status_code == 401
    # The worker logs it; Ray brings its log lines to the front's.
    assert wait_until(lambda: "refused POST /v1/chat/completions" in open(front_server.log_path).read(), 20)


def test_add_model_places_on_the_named_node_and_remove_model_releases_it(cluster, api, front):
    head = cluster[0].head_node
    free = lambda: ray.available_resources().get("front_node", 0)  # noqa: E731
    before = free()
    added = front.post("/add_model", json={"model_id": DEFAULT_MODEL, "model_name": "added", "threads": 1,
                                           "max_sequences": 1, "cache_size": 1024, "ray_resources": "front_node:2"})
    assert added.status_code == 200, added.text
    assert added.json()["data"][0]["nodes"][0]["id"] == head.node_id
    assert wait_until(lambda: free() == before - 2, 10)
    assert api.completions.create(model="added", prompt="Hi", max_tokens=2).model == "added"
    # On the front's own node the worker takes the stream over (it answers `Connection: close` itself);
    # the front relays a stream from another node.
    for model, handed_over in (("added", True), (PINNED, False)):
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "stream": True}
        with httpx.stream("POST", f"{front.base_url}/v1/chat/completions", json=body, timeout=60) as response:
            assert (response.headers.get("connection") == "close") is handed_over
            assert response.read().rstrip().endswith(b"data: [DONE]")
    assert front.post("/remove_model", json={"model": "added"}).status_code == 200
    assert wait_until(lambda: free() == before, 20)  # the actor and its resources are released
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="added", prompt="Hi", max_tokens=1)


def test_add_model_says_why_no_node_can_serve_a_spec(front):
    nowhere = front.post("/add_model", json={"model_id": DEFAULT_MODEL, "model_name": "x", "ray_resources": "gpu_box:1"})
    assert nowhere.status_code == 400
    assert "no node of the Ray cluster has CPU:1, gpu_box:1" in nowhere.json()["error"]["message"]
    elsewhere = front.post("/add_model", json={"model_id": "/models/only-on-my-laptop.gguf", "threads": 1})
    assert elsewhere.status_code == 400
    message = elsewhere.json()["error"]["message"]
    assert "/models/only-on-my-laptop.gguf: not found on the Ray node" in message and "ray_resources=" in message
    assert {m["id"] for m in front.get("/v1/models").json()["data"]} == {DEFAULT_MODEL, PINNED}


def test_a_killed_worker_is_restarted_by_its_actor(front, api):
    before = instance(front, PINNED)
    os.kill(before["pid"], signal.SIGKILL)
    assert wait_until(lambda: instance(front, PINNED)["status"] == "ready" and instance(front, PINNED)["restarts"] == 1, 90)
    after = instance(front, PINNED)
    assert after["pid"] != before["pid"] and after["node"] == before["node"]
    assert api.completions.create(model=PINNED, prompt="Hi", max_tokens=1).model == PINNED


def test_a_killed_actor_is_restarted_by_ray(front, api):
    before = instance(front, PINNED)
    with open(f"/proc/{before['pid']}/stat") as stat:
        actor_pid = int(stat.read().rsplit(")", 1)[1].split()[1])  # the worker's parent: the Ray actor's process
    os.kill(actor_pid, signal.SIGKILL)
    assert wait_until(lambda: instance(front, PINNED)["restarts"] == 2 and instance(front, PINNED)["status"] == "ready", 90)
    after = instance(front, PINNED)
    assert after["pid"] != before["pid"] and after["node"] == before["node"]  # node_b is the only node for it
    assert api.completions.create(model=PINNED, prompt="Hi", max_tokens=1).model == PINNED


def test_a_dead_node_fails_its_requests_and_its_instance_restarts_elsewhere(cluster, api, front):
    ray_cluster, nodes = cluster
    nodes["c"] = ray_cluster.add_node(num_cpus=2, resources={"smol": 1})  # where the instance can go next
    ray_cluster.wait_for_nodes()
    threads, results = doomed_requests(api, front, DEFAULT_MODEL, "<|im_end|>")
    assert wait_until(lambda: running(front, DEFAULT_MODEL) == 2, 60), results
    ray_cluster.remove_node(nodes.pop("a"), allow_graceful=False)
    for thread in threads:
        thread.join(60)
    assert results["plain"].status_code == 503 and results["plain"].body["code"] == "worker_unavailable"
    assert "worker" in results["stream"].message
    # Routing stopped at once: a request now waits for no dead worker, and the other model never stopped.
    assert instance(front, DEFAULT_MODEL)["status"] != "ready"
    assert api.completions.create(model=PINNED, prompt="Hi", max_tokens=1).model == PINNED
    assert wait_until(lambda: instance(front, DEFAULT_MODEL)["status"] == "ready", 120)
    moved = instance(front, DEFAULT_MODEL)
    assert moved["node"]["id"] == nodes["c"].node_id and moved["restarts"] == 1
    assert api.completions.create(model=DEFAULT_MODEL, prompt="Hi", max_tokens=1).model == DEFAULT_MODEL


def test_shutdown_stops_the_workers_and_releases_every_actor(front_server):
    stop_server(front_server)
    assert front_server.process.returncode == 0
    assert wait_until(lambda: ray.available_resources().get("CPU", 0) == ray.cluster_resources().get("CPU"), 30)


def test_the_config_file_names_the_cluster_and_a_dead_address_fails_fast(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    dead = f"127.0.0.1:{free_port()}"
    (home / "model_config.yaml").write_text(f"ray: {dead}\n")
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "gallama", "serve", "--port", str(free_port())], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "GALLAMA_HOME": str(home), "COLUMNS": "300"})
    assert result.returncode != 0 and time.monotonic() - began < 30
    assert f"cannot join the Ray cluster at {dead}: nothing answers" in result.stderr
