"""Security groups kept enforced: every driver is programmed with the store's groups and
endpoints at start, when endpoints here come or go, and on every change to the store
(another host's endpoints, the operator's ``plugstrip sg``), so a rule change reaches every
host within a second.
"""

from __future__ import annotations

import asyncio
import logging

from plugstrip.netdrivers.service import NetworkService

log = logging.getLogger("plugstrip.guard")

RETRY = 1.0  # seconds before trying again after the store or a datapath failed


class Guard:
    def __init__(self, service: NetworkService, changes: asyncio.Event) -> None:
        self.service = service
        # Set when endpoints here come or go: the service is made with its ``set`` among
        # its change callbacks, by whoever makes both.
        self._wake = changes
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._wake.set()  # enforce (and replace what a previous run left) at once
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._watch())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.service.enforce()
            except Exception as exc:  # the store away, a datapath tool failing: again soon
                log.warning("security groups not enforced, trying again: %s", exc)
                await asyncio.sleep(RETRY)
                self._wake.set()

    async def _watch(self) -> None:
        while True:
            try:
                # groups, endpoints, networks: not the hosts' heartbeats, a write a second each
                async for _ in self.service.store.changes("sg", "alloc", "net"):
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("store changes not followed, following again: %s", exc)
            await asyncio.sleep(RETRY)
