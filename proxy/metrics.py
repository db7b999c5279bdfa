"""Prometheus metrics, served on the admin listener (never on the Docker API socket)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from plugstrip.proxy.contract import split_version

log = logging.getLogger("plugstrip.metrics")
REFRESH_TIMEOUT = 5.0  # seconds a scrape waits for the metrics read at scrape time

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "plugstrip_requests",
            "API requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "plugstrip_upstream_latency_seconds",
            "Time to the upstream's response head",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
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
        self._child(self.requests, (endpoint, method, status)).inc()

    def observe_upstream(self, endpoint: str, seconds: float) -> None:
        self._child(self.upstream_latency, (endpoint,)).observe(seconds)

    def observe_adapter(self, adapter: str, hook: str, outcome: str, seconds: float) -> None:
        self._child(self.adapter_latency, (adapter, hook, outcome)).observe(seconds)

    def render(self) -> bytes:
        out: bytes = generate_latest(self.registry)
        return out


@functools.lru_cache(maxsize=4096)  # asked on every call: pollers repeat theirs
def endpoint_label(path: str) -> str:
    """A low-cardinality label: the resource, without ids (``/containers/{id}/start``)."""
    parts = split_version(path)[1].strip("/").split("/")
    if len(parts) >= 3:
        return f"/{parts[0]}/{{id}}/{parts[-1]}"
    if len(parts) == 2 and parts[1] not in ("json", "create", "prune", "search", "load", "get"):
        return f"/{parts[0]}/{{id}}"
    return "/" + "/".join(parts)
