"""Prometheus metrics, served on the admin listener (never on the Docker API socket)."""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from plugstrip.proxy.contract import split_version

log = logging.getLogger("plugstrip.metrics")
REFRESH_TIMEOUT = 5.0  # seconds a scrape waits for the metrics read at scrape time

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = _CallCounts()
        self.registry.register(self.calls)
        self.adapter_latency = Histogram(
            "plugstrip_adapter_latency_seconds",
            "Time spent in each adapter hook",
            ["adapter", "hook", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "plugstrip_open_streams", "Streamed responses in flight", registry=self.registry
        )
        self.open_hijacks = Gauge(
            "plugstrip_open_hijacks",
            "Hijacked (attach/exec/session) connections open",
            registry=self.registry,
        )
        self.connections = Gauge(
            "plugstrip_client_connections", "Client connections open", registry=self.registry
        )

        # prometheus_client's labels() validates and locks on every call: a quarter of a
        # pass-through call's Python time. Its children are kept here instead.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        # Metrics read from elsewhere when scraped (a datapath's counters): each updates
        # its own metrics on ``registry``
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def refresh_with(self, refresher: Callable[[], Awaitable[None]]) -> None:
        self._refreshers.append(refresher)

    async def refresh(self) -> None:
        """Run every refresher (one failing or slow leaves its metrics as they were)."""
        for refresher in self._refreshers:
            try:
                async with asyncio.timeout(REFRESH_TIMEOUT):
                    await refresher()
            except Exception as exc:
                log.warning("metrics not refreshed: %s", exc)

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def count_request(self, endpoint: str, method: str, status: str) -> None:
        labels = (endpoint, method, status)
        self.calls.requests[labels] = self.calls.requests.get(labels, 0) + 1

    def observe_upstream(self, endpoint: str, seconds: float) -> None:
        self.calls.observe(endpoint, seconds)

    def observe_adapter(self, adapter: str, hook: str, outcome: str, seconds: float) -> None:
        self._child(self.adapter_latency, (adapter, hook, outcome)).observe(seconds)

    def render(self) -> bytes:
        out: bytes = generate_latest(self.registry)
        return out


class _CallCounts:
    """Requests by endpoint, method and status, and the upstream's latency by endpoint,
    kept as plain numbers. Every call updates them on the event loop, and a scrape (on
    the same loop) reads them: prometheus_client's own metrics take a lock on each update,
    a tenth of a pass-through call's Python time (bench/call_cost.py)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        # per endpoint: the count of each bucket (the last one +Inf), and the sum
        self.latency: dict[str, tuple[list[int], list[float]]] = {}

    def observe(self, endpoint: str, seconds: float) -> None:
        entry = self.latency.get(endpoint)
        if entry is None:
            entry = self.latency[endpoint] = ([0] * (len(_LATENCY_BUCKETS) + 1), [0.0])
        entry[0][bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1  # a bound is inclusive
        entry[1][0] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "plugstrip_requests",
            "API requests by endpoint, method and status",
            labels=["endpoint", "method", "status"],
        )
        for labels, count in self.requests.items():
            requests.add_metric(labels, count)
        yield requests
        latency = HistogramMetricFamily(
            "plugstrip_upstream_latency_seconds",
            "Time to the upstream's response head",
            labels=["endpoint"],
        )
        bounds = [*map(floatToGoString, _LATENCY_BUCKETS), "+Inf"]
        for endpoint, (counts, total) in self.latency.items():
            cumulative = list(itertools.accumulate(counts))
            latency.add_metric([endpoint], list(zip(bounds, cumulative, strict=True)), total[0])
        yield latency


@functools.lru_cache(maxsize=4096)  # asked on every call: pollers repeat theirs
def endpoint_label(path: str) -> str:
    """A low-cardinality label: the resource, without ids (``/containers/{id}/start``)."""
    parts = split_version(path)[1].strip("/").split("/")
    if len(parts) >= 3:
        return f"/{parts[0]}/{{id}}/{parts[-1]}"
    if len(parts) == 2 and parts[1] not in ("json", "create", "prune", "search", "load", "get"):
        return f"/{parts[0]}/{{id}}"
    return "/" + "/".join(parts)
