"""The workers' metrics in the front's /metrics: each worker's families, scraped and merged, labelled by
model and instance."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gallama.router.instances import Instance
from gallama.router.pool import ModelPool


class _Families:
    """A registry-shaped holder, for generate_latest."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        return self.families


async def _scrape(client: httpx.AsyncClient, instance: Instance) -> str:
    try:
        response = await instance.http(client).get(f"{instance.base_url}/metrics", headers=instance.headers, timeout=2)
    except httpx.HTTPError:
        return ""  # a worker that is restarting shows up at the next scrape
    return response.text if response.status_code == 200 else ""


def merge_families(scraped: list[tuple[dict[str, str], str]]) -> _Families:
    """Exposition texts, each with the labels its samples get, as one family per metric name (the text format
    allows a name once, whatever the number of workers)."""
    merged: dict[str, Metric] = {}
    for labels, text in scraped:
        for family in text_string_to_metric_families(text):
            target = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            target.samples.extend(sample._replace(labels={**sample.labels, **labels}) for sample in family.samples)
    return _Families(list(merged.values()))


async def scrape_workers(client: httpx.AsyncClient, pool: ModelPool) -> _Families:
    instances = [(group.name, instance) for group in list(pool.groups.values()) for instance in group.instances
                 if instance.status == "ready"]
    texts = await asyncio.gather(*(_scrape(client, instance) for _, instance in instances))
    return merge_families([({"model": model, "instance": str(instance.index)}, text)
                           for (model, instance), text in zip(instances, texts)])
