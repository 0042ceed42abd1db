"""serve --ray, the pure parts: what Ray is asked for, which clusters can hold it, specs resolved on the node,
and the worker's cluster secret. The cluster itself: tests/e2e/test_ray_cluster.py."""

from __future__ import annotations

import logging
import os

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gallama.bundled_models import DEFAULT_CHAT_MODEL
from gallama.config import ModelSpec, SpecError, configured_ray_address, load_config, parse_spec_string
from gallama.server.cluster_secret import SECRET_HEADER, RequireClusterSecret

pytest.importorskip("ray", reason="ray is not installed (pip install 'gallama[ray]')")
from gallama.router.ray_host import missing_files  # noqa: E402
from gallama.router.ray_instances import actor_options, front_spec, node_spec, unplaceable  # noqa: E402


def test_ray_resources_parse_from_a_spec_string():
    spec = parse_spec_string("model_id=x.gguf ray_resources=node_a:1,big_disk:0.5")
    assert spec.ray_resources == {"node_a": 1.0, "big_disk": 0.5}


@pytest.mark.parametrize("value, complaint", [
    ("node_a", "'node_a' is not name:amount"),
    ("CPU:2", "give 'threads'"),
    ("GPU:1", "give 'gpus'"),
    ("node_a:0", "must be positive"),
    ("node_a:lots", "ray_resources"),
])
def test_bad_ray_resources_are_refused_with_the_reason(value, complaint):
    with pytest.raises(SpecError, match=complaint):
        parse_spec_string(f"model_id=x.gguf ray_resources={value}")


def test_actor_options_reserve_threads_gpus_and_custom_resources():
    spec = ModelSpec(model_id="m", threads=3, gpus=[20, 0, 10], ray_resources={"node_a": 1})
    options = actor_options(spec)
    assert (options["num_cpus"], options["num_gpus"], options["resources"]) == (3, 2, {"node_a": 1})
    assert options["max_restarts"] == -1 and options["max_task_retries"] == 0
    plain = actor_options(ModelSpec(model_id="m"))
    assert plain["num_cpus"] == 1 and "num_gpus" not in plain and "resources" not in plain


def test_the_node_sees_only_the_gpus_ray_reserved_numbered_from_zero():
    assert node_spec(ModelSpec(model_id="m", gpus=[0, 20, 0, 10])).gpus == [20, 10]
    assert node_spec(ModelSpec(model_id="m")).gpus is None


NODES = [
    {"Alive": True, "Resources": {"CPU": 2.0, "node_a": 1.0, "memory": 1e9, "node:192.0.2.2": 1.0}},
    {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
    {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 8.0, "node_b": 1.0}},
]


def test_a_spec_one_node_can_hold_is_placeable():
    assert unplaceable(actor_options(ModelSpec(model_id="m", threads=2, ray_resources={"node_a": 1})), NODES) is None
    assert unplaceable(actor_options(ModelSpec(model_id="m", gpus=[10])), NODES) is None


def test_a_spec_no_live_node_can_hold_says_what_the_nodes_have():
    # node_a and a GPU exist, but not on one node; node_b only on a dead node.
    split = unplaceable(actor_options(ModelSpec(model_id="m", gpus=[10], ray_resources={"node_a": 1})), NODES)
    assert split.startswith("no node of the Ray cluster has CPU:1, GPU:1, node_a:1")
    assert "CPU:2, node_a:1; CPU:2, GPU:1" in split and "memory" not in split and "node:" not in split
    assert "node_b:1" in unplaceable(actor_options(ModelSpec(model_id="m", ray_resources={"node_b": 1})), NODES)


def test_the_front_leaves_files_to_the_node(tmp_path):
    missing = tmp_path / "elsewhere" / "qwen-7b.Q4.gguf"
    spec = front_spec(parse_spec_string(f"model_id={missing} threads=1"), {})
    assert spec.model_id == str(missing) and spec.model_name == "qwen-7b.Q4" and spec.threads == 1
    assert spec.backend is None and spec.model_type is None  # the node's files tell
    relative = front_spec(ModelSpec(model_id="models/x.gguf"), {})
    assert relative.model_id == os.path.join(os.getcwd(), "models/x.gguf")  # the node runs in another folder
    bundled = front_spec(ModelSpec(model_id=DEFAULT_CHAT_MODEL.name.lower()), {})
    assert bundled.model_id == DEFAULT_CHAT_MODEL.name.lower() and bundled.model_name == DEFAULT_CHAT_MODEL.name
    config = {"big": ModelSpec(model_id="/models/big.gguf", cache_size=4096, threads=8),
              "small": ModelSpec(model_id="/models/small.gguf")}
    named = front_spec(parse_spec_string("model_id=big threads=2 draft_model_id=small"), config)
    assert (named.model_id, named.model_name, named.cache_size, named.threads) == ("/models/big.gguf", "big", 4096, 2)
    assert named.draft_model_id == "/models/small.gguf"  # the node has not the front's config


def test_the_node_names_the_files_it_does_not_have(tmp_path):
    here = tmp_path / "m.gguf"
    here.write_bytes(b"GGUF")
    assert missing_files(ModelSpec(model_id=str(here))) == []
    assert missing_files(ModelSpec(model_id=DEFAULT_CHAT_MODEL.name)) == []
    spec = ModelSpec(model_id=str(here), draft_model_id="/nowhere/d.gguf", chat_template="/nowhere/t.jinja")
    assert missing_files(spec) == ["/nowhere/d.gguf", "/nowhere/t.jinja"]


def test_the_config_file_names_the_cluster(tmp_path):
    path = tmp_path / "model_config.yaml"
    path.write_text("ray: auto\nsmall:\n  model_id: /models/small.gguf\n")
    assert configured_ray_address(path) == "auto"
    assert list(load_config(path)) == ["small"]  # `ray` is no model
    path.write_text("ray:\n  model_id: x\n")
    with pytest.raises(SpecError, match="address of a Ray cluster"):
        configured_ray_address(path)
    path.write_text("small:\n  model_id: /models/small.gguf\n")
    assert configured_ray_address(path) is None


@pytest.fixture
def guarded():
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat():
        return {"ok": True}

    return TestClient(RequireClusterSecret(app, secret="s3cret"))


def test_the_worker_serves_only_requests_with_the_cluster_secret(guarded, caplog):
    assert guarded.post("/v1/chat/completions", headers={SECRET_HEADER: "s3cret"}).json() == {"ok": True}
    with caplog.at_level(logging.WARNING, logger="gallama.worker"):
        for headers in ({}, {SECRET_HEADER: "guess"}):
            refused = guarded.post("/v1/chat/completions", headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "cluster_secret_required"
    assert sum("refused POST /v1/chat/completions" in r.message for r in caplog.records) == 2
    anthropic = guarded.post("/v1/messages")
    assert anthropic.status_code == 401 and anthropic.json()["error"]["type"] == "authentication_error"
