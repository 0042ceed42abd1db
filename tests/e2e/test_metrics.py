"""The front's /metrics: the workers' token counters, latency histograms and engine gauges, by model."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEFAULT_MODEL

NGRAM_MODEL = "smollm-ngram-metrics"
REPEAT = ("Repeat this text exactly: Alice was beginning to get very tired of sitting by her sister on the bank, "
          "and of having nothing to do: once or twice she had peeped into the book her sister was reading.")


def scrape(http: httpx.Client, model: str) -> dict[str, float]:
    """Sample name (with le for buckets) -> value, for one model's samples."""
    text = http.get("/metrics").text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == model:
                key = sample.name + (f"[{sample.labels['le']}]" if "le" in sample.labels else "")
                values[key] = values.get(key, 0.0) + sample.value
    return values


def test_tokens_and_latencies_move_after_a_request(http, client):
    before = scrape(http, DEFAULT_MODEL)
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Count from one to ten."}], max_tokens=12,
        temperature=0, stream=True, stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage][0]
    after = scrape(http, DEFAULT_MODEL)
    assert after["gallama_prompt_tokens_total"] - before["gallama_prompt_tokens_total"] == usage.prompt_tokens
    assert after["gallama_generated_tokens_total"] - before["gallama_generated_tokens_total"] == usage.completion_tokens
    assert after["gallama_time_to_first_token_seconds_count"] - before["gallama_time_to_first_token_seconds_count"] == 1
    per_token = after["gallama_time_per_output_token_seconds_count"] - before["gallama_time_per_output_token_seconds_count"]
    assert per_token == usage.completion_tokens - 1
    assert after["gallama_time_to_first_token_seconds_sum"] > before["gallama_time_to_first_token_seconds_sum"]
    # Idle again: nothing queued or running, and the gauges are there to say so.
    assert after["gallama_queue_depth"] == 0 and after["gallama_running_sequences"] == 0
    front = scrape_front(http)
    assert front[("/v1/chat/completions", "200")] >= 1


def scrape_front(http: httpx.Client) -> dict[tuple[str, str], float]:
    families = text_string_to_metric_families(http.get("/metrics").text)
    requests = next(f for f in families if f.name == "gallama_requests")
    return {(s.labels["endpoint"], s.labels["status"]): s.value for s in requests.samples if s.name.endswith("_total")}


@pytest.fixture
def ngram_model(http):
    added = http.post("/add_model", json={"model_id": DEFAULT_MODEL, "model_name": NGRAM_MODEL, "draft_mode": "ngram",
                                          "max_sequences": 1, "cache_size": 2048})
    assert added.status_code == 200, added.text
    yield NGRAM_MODEL
    http.post("/remove_model", json={"model": NGRAM_MODEL})


def test_draft_counters_match_the_usage(http, client, ngram_model):
    before = scrape(http, ngram_model)
    reply = client.chat.completions.create(model=ngram_model, messages=[{"role": "user", "content": REPEAT}],
                                           max_tokens=60, temperature=0)
    details = reply.usage.completion_tokens_details
    drafted = details.accepted_prediction_tokens + details.rejected_prediction_tokens
    after = scrape(http, ngram_model)
    assert drafted > 0
    assert after["gallama_draft_tokens_total"] - before.get("gallama_draft_tokens_total", 0) == drafted
    accepted = after["gallama_draft_accepted_tokens_total"] - before.get("gallama_draft_accepted_tokens_total", 0)
    assert accepted == details.accepted_prediction_tokens
    # The other model's series stay apart.
    assert scrape(http, DEFAULT_MODEL)["gallama_draft_tokens_total"] == 0


def test_tokens_a_schema_forces_are_counted_and_not_sampled(http, client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "population": {"type": "integer", "minimum": 0, "maximum": 10**8}},
              "required": ["city", "population"], "additionalProperties": False}
    before = scrape(http, DEFAULT_MODEL)
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Describe Paris as JSON."}], max_tokens=60,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    forced = scrape(http, DEFAULT_MODEL)["gallama_forced_tokens_total"] - before.get("gallama_forced_tokens_total", 0)
    assert json.loads(reply.choices[0].message.content).keys() == {"city", "population"}
    # The keys after the opening brace and the comma are the schema's, not the model's choice.
    assert 2 <= forced < reply.usage.completion_tokens
