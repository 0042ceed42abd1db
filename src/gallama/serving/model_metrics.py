"""Prometheus metrics of one served model, in its worker: token counts, latencies, engine gauges.

The front scrapes every worker's registry and adds the model and instance labels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gallama.engines.base import Engine

# From a fraction of a token's time on a quiet machine to a long queue wait.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class _EngineGauges:
    """Read at scrape time from the engine's counters, so the engine needs no metrics code."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self):
        counters = self.engine.counters()
        yield GaugeMetricFamily("gallama_queue_depth", "Requests waiting for a sequence slot", value=counters.queue_depth)
        yield GaugeMetricFamily("gallama_running_sequences", "Sequences being decoded", value=counters.running_sequences)
        yield CounterMetricFamily("gallama_draft_tokens", "Tokens drafted for speculative decoding",
                                  value=counters.drafted)
        yield CounterMetricFamily("gallama_draft_accepted_tokens", "Drafted tokens the model kept",
                                  value=counters.accepted)
        yield CounterMetricFamily("gallama_forced_tokens", "Tokens a constraint forced, emitted without sampling",
                                  value=counters.forced)


class ModelMetrics:
    def __init__(self, engine: Engine | None = None):
        self.registry = CollectorRegistry()
        self.prompt_tokens = Counter("gallama_prompt_tokens", "Prompt tokens of generation requests",
                                     registry=self.registry)
        self.generated_tokens = Counter("gallama_generated_tokens", "Tokens generated", registry=self.registry)
        self.schema_retries = Counter("gallama_schema_retries", "Answers drawn again because the last broke its schema",
                                      registry=self.registry)
        self.time_to_first_token = Histogram(
            "gallama_time_to_first_token_seconds", "From queueing a choice to its first token (queue wait included)",
            buckets=TTFT_BUCKETS, registry=self.registry,
        )
        self.time_per_token = Histogram(
            "gallama_time_per_output_token_seconds", "Time between consecutive tokens of a choice",
            buckets=TOKEN_BUCKETS, registry=self.registry,
        )
        if engine is not None:
            self.registry.register(_EngineGauges(engine))
