"""Scrape the workers' Prometheus endpoints for the figures Kafka cannot give.

Error rates by class, outcomes, blocked partitions, breaker states, sink rows and Gmail quota
units live only in the workers' ``/metrics`` (``streams.runtime.metrics``, ``sinks.metrics``).
Each URL is fetched at once with a short timeout and parsed with prometheus_client's text
parser; a worker that does not answer is reported down, never an error, so status works with
any subset of workers running. Reads only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "inboxflow_"
SCRAPE_TIMEOUT_SECONDS = 1.5

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scrape:
    """One endpoint's answer: its ``inboxflow_*`` samples (histogram buckets left out)."""

    url: str
    up: bool
    error: str | None
    samples: Mapping[tuple[str, Labels], float]

    def values(self, name: str, **match: str) -> dict[Labels, float]:
        """Return the samples called ``name`` whose labels include ``match``, by label set."""
        return {
            labels: value
            for (sample, labels), value in self.samples.items()
            if sample == name and all((k, v) in labels for k, v in match.items())
        }


@dataclass(frozen=True)
class MetricsSample:
    """Every endpoint's answer at one moment."""

    at: float  # monotonic seconds
    scrapes: tuple[Scrape, ...]

    def by_url(self) -> dict[str, Scrape]:
        """Return the answers keyed by URL."""
        return {scrape.url: scrape for scrape in self.scrapes}


def parse_metrics(text: str) -> dict[tuple[str, Labels], float]:
    """Return the ``inboxflow_*`` samples of a Prometheus text exposition. Pure.

    Raises:
        ValueError: the text is not the Prometheus exposition format.
    """
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(PREFIX):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created")):
                continue
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


async def scrape_workers(
    urls: Sequence[str],
    *,
    per_request_seconds: float = SCRAPE_TIMEOUT_SECONDS,
    session: aiohttp.ClientSession | None = None,
) -> MetricsSample:
    """Fetch every URL at once; return what each answered (down ones with their error)."""
    at = time.monotonic()
    if not urls:
        return MetricsSample(at, ())
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await scrape_workers(urls, per_request_seconds=per_request_seconds, session=own)
    client_timeout = aiohttp.ClientTimeout(total=per_request_seconds)
    scrapes = await asyncio.gather(*(_scrape(session, url, client_timeout) for url in urls))
    return MetricsSample(at, tuple(scrapes))


async def _scrape(session: aiohttp.ClientSession, url: str, limit: aiohttp.ClientTimeout) -> Scrape:
    try:
        async with session.get(url, timeout=limit) as response:
            if response.status != 200:
                return Scrape(url, False, f"HTTP {response.status}", {})
            text = await response.text()
        return Scrape(url, True, None, parse_metrics(text))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Scrape(url, False, str(exc) or type(exc).__name__, {})


def label(labels: Labels, name: str) -> str | None:
    """Return the value of label ``name``, or None. Pure."""
    return dict(labels).get(name)


def counter_increase(
    current: Scrape, previous: Scrape | None, name: str, **match: str
) -> dict[Labels, float]:
    """Return how much each counter child grew since ``previous`` (a restart: its whole value).

    Pure. Children absent from ``previous`` count from zero only when the worker was already
    up then (it started counting meanwhile); otherwise there is nothing to compare with.
    """
    now = current.values(name, **match)
    if previous is None or not previous.up:
        return {}
    before = previous.values(name, **match)
    grown: dict[Labels, float] = {}
    for labels, value in now.items():
        old = before.get(labels, 0.0)
        grown[labels] = value - old if value >= old else value
    return grown


def sum_by(values: Mapping[Labels, float], key: str) -> dict[str, float]:
    """Return the values summed by label ``key`` (children without it are left out). Pure."""
    totals: dict[str, float] = {}
    for labels, value in values.items():
        found = label(labels, key)
        if found is not None:
            totals[found] = totals.get(found, 0.0) + value
    return totals


def merge_sums(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Return the key-wise sum of ``parts``. Pure."""
    totals: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            totals[key] = totals.get(key, 0.0) + value
    return totals
