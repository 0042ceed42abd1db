"""Merging the workers' metrics: one family per name, each worker's samples under its own labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gallama.router.worker_metrics import merge_families


def worker_text(tokens: int, latencies: list[float]) -> str:
    registry = CollectorRegistry()
    Counter("gallama_generated_tokens", "Tokens generated", registry=registry).inc(tokens)
    histogram = Histogram("gallama_time_to_first_token_seconds", "TTFT", buckets=(0.1, 1), registry=registry)
    for value in latencies:
        histogram.observe(value)
    return generate_latest(registry).decode()


def test_two_workers_become_one_family_per_name():
    merged = merge_families([
        ({"model": "a", "instance": "1"}, worker_text(5, [0.05])),
        ({"model": "a", "instance": "2"}, worker_text(7, [0.5, 2.0])),
        ({"model": "b", "instance": "1"}, ""),  # a worker that did not answer
    ])
    text = generate_latest(merged).decode()
    assert text.count("# TYPE gallama_generated_tokens_total counter") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    tokens = {s.labels["instance"]: s.value for s in families["gallama_generated_tokens"].samples
              if s.name.endswith("_total")}
    assert tokens == {"1": 5, "2": 7}
    counts = {(s.labels["model"], s.labels["instance"]): s.value
              for s in families["gallama_time_to_first_token_seconds"].samples if s.name.endswith("_count")}
    assert counts == {("a", "1"): 1, ("a", "2"): 2}
    slow = [s for s in families["gallama_time_to_first_token_seconds"].samples
            if s.name.endswith("_bucket") and s.labels["le"] == "1.0" and s.labels["instance"] == "2"]
    assert [s.value for s in slow] == [1]
