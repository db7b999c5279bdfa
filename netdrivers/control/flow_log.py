"""The security groups' flow log: a sample of what the datapaths drop, as JSON lines.

Each driver logs its drops at most ``FLOW_RATE`` a second (an nftables limit, an OpenFlow
meter: a flood of denied packets costs the kernel a counter, not a log line each); this
writes at most ``rate`` lines a second of what they report, each naming the time, the
network, why (no rule of which groups and direction, a spoofed source, a flood), the
packet's addresses, protocol and port, and the endpoints: the one whose address it names
as its source, the one whose port it came in on (its real sender, whatever it wrote), and
the destination.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from plugstrip.netdrivers.control.service import Attachment, NetworkService
from plugstrip.netdrivers.domain.contract import Driver
from plugstrip.netdrivers.domain.security import Denial

log = logging.getLogger("plugstrip.flowlog")

RATE = 10.0  # lines a second, at most (a burst of as many)
MAX_BYTES = 64 << 20  # the file is moved to FILE.1 beyond this
AGAIN = 5.0  # seconds before watching a driver again after it failed
_INDEX_AGE = 1.0  # seconds the endpoints' index is reused


class FlowLog:
    def __init__(self, service: NetworkService, path: str | Path, rate: float = RATE) -> None:
        self.service = service
        self.path = Path(path)
        self.rate = rate
        self._tokens, self._filled = rate, time.monotonic()
        self._queue: asyncio.Queue[tuple[float, Denial]] = asyncio.Queue(maxsize=100)
        self._tasks: list[asyncio.Task[None]] = []
        self._index: tuple[float, list[Attachment]] = (0.0, [])
        self.skipped = 0  # denials beyond the rate, not written

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tasks = [
            asyncio.create_task(self._watch(name, driver))
            for name, driver in self.service.drivers.items()
        ]
        self._tasks.append(asyncio.create_task(self._write()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _watch(self, name: str, driver: Driver) -> None:
        while True:
            try:
                await driver.watch_denials(self._report)
                return  # a datapath that logs nothing
            except Exception as exc:
                log.warning("%s: denials not read, trying again: %s", name, exc)
                await asyncio.sleep(AGAIN)

    def _report(self, denial: Denial) -> None:
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._filled) * self.rate)
        self._filled = now
        if self._tokens < 1 or self._queue.full():
            self.skipped += 1
            return
        self._tokens -= 1
        self._queue.put_nowait((time.time(), denial))

    async def _write(self) -> None:
        while True:
            when, denial = await self._queue.get()
            try:
                line = json.dumps(await self.record(when, denial))
                await asyncio.to_thread(self._append, line)
            except Exception as exc:
                log.warning("flow log not written: %s", exc)

    def _append(self, line: str) -> None:
        try:
            if self.path.stat().st_size > MAX_BYTES:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(line + "\n")

    async def record(self, when: float, denial: Denial) -> dict[str, Any]:
        """A denial as the flow log writes it."""
        endpoints = await self._endpoints()
        sender = next(
            (a for a in endpoints if (a.network.id, a.owner) == (denial.network_id, denial.owner)),
            None,
        )
        on = [a for a in endpoints if sender is None or a.network.id == sender.network.id]
        source = next((a for a in on if denial.src in a.addresses), None)
        destination = next((a for a in on if denial.dst in a.addresses), None)
        network = sender or destination or source
        c = denial.counted
        stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
        return {
            "time": stamp.replace("+00:00", "Z"),
            "network": network.network.name if network else None,
            "reason": c.reason,
            "group": c.group or None,
            "direction": c.direction or None,
            "proto": denial.proto or None,
            "port": denial.port,
            "source": _endpoint(source, denial.src),
            "sender": _endpoint(sender, None),
            "destination": _endpoint(destination, denial.dst),
        }

    async def _endpoints(self) -> list[Attachment]:
        made, endpoints = self._index
        if time.monotonic() - made > _INDEX_AGE:
            endpoints = await self.service.attachments()
            self._index = (time.monotonic(), endpoints)
        return endpoints


def _endpoint(found: Attachment | None, address: object) -> dict[str, Any] | None:
    if found is None:
        return None if address is None else {"address": str(address)}
    return {
        "address": str(address if address is not None else found.address),
        "container": found.meta.container,
        "name": found.meta.name or None,
        "groups": found.groups,
    }
