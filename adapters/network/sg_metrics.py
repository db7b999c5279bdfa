"""Security groups' verdicts as Prometheus counters: each rule's traffic, the drops (no
rule, spoofed, flood), read from every driver's datapath when ``/metrics`` is scraped.

The datapath's counters restart when it drops one (a rule revoked, a table made anew
after a failure); these only grow: each scrape adds what a counter gained since the last,
or all it has where it fell (it restarted).
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter

from plugstrip.netdrivers.control.service import NetworkService
from plugstrip.netdrivers.domain.security import Count


class SecurityGroupMetrics:
    def __init__(self, service: NetworkService, registry: CollectorRegistry) -> None:
        self.service = service
        rule = ["driver", "group", "direction", "rule"]
        drop = ["driver", "reason", "group", "direction"]
        self.rule_packets = Counter(
            "plugstrip_sg_rule_packets",
            "Packets a security-group rule allowed (a connection's first: the rest pass as"
            " established)",
            rule,
            registry=registry,
        )
        self.rule_bytes = Counter(
            "plugstrip_sg_rule_bytes", "Bytes of those packets", rule, registry=registry
        )
        self.dropped_packets = Counter(
            "plugstrip_sg_dropped_packets",
            "Packets dropped: no rule allowed them (for an endpoint in group), a forged"
            " source (spoofed), a broadcast or multicast no rule allowed (flood)",
            drop,
            registry=registry,
        )
        self.dropped_bytes = Counter(
            "plugstrip_sg_dropped_bytes", "Bytes of those packets", drop, registry=registry
        )
        self._last: dict[tuple[str, str], tuple[int, int]] = {}
        self._lock = asyncio.Lock()  # two scrapes at once add each gain once

    async def refresh(self) -> None:
        async with self._lock:
            for driver, counts in (await self.service.counts()).items():
                for count in counts:
                    self._add(driver, count)

    def _add(self, driver: str, count: Count) -> None:
        packets0, bytes0 = self._last.get((driver, count.id), (0, 0))
        self._last[(driver, count.id)] = (count.packets, count.bytes)
        if count.packets < packets0 or count.bytes < bytes0:  # restarted
            packets0, bytes0 = 0, 0
        c = count.counted
        if c.reason:
            labels = (driver, c.reason, c.group, c.direction)
            packets, octets = self.dropped_packets, self.dropped_bytes
        else:
            labels = (driver, c.group, c.direction, c.rule)
            packets, octets = self.rule_packets, self.rule_bytes
        packets.labels(*labels).inc(count.packets - packets0)
        octets.labels(*labels).inc(count.bytes - bytes0)
