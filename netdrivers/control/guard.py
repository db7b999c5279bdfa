"""Security groups kept enforced: every driver is programmed with the groups and
endpoints of the service's view at start, when endpoints here come or go, and on every
change the view follows (another host's endpoints, the operator's ``plugstrip sg``), so a
rule change reaches every host within a second.
"""

from __future__ import annotations

import asyncio
import logging

from plugstrip.netdrivers.control.service import NetworkService
from plugstrip.netdrivers.control.view import Delta

log = logging.getLogger("plugstrip.guard")

RETRY = 1.0  # seconds before trying again after a datapath failed


class Guard:
    def __init__(self, service: NetworkService, changes: asyncio.Event) -> None:
        self.service = service
        # Set when endpoints here come or go (the service is made with its ``set`` among
        # its change callbacks, by whoever makes both), and by the view's changes.
        self._wake = changes
        self._task: asyncio.Task[None] | None = None
        service.view.listen(self._changed)

    def start(self) -> None:
        self._wake.set()  # enforce (and replace what a previous run left) at once
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _changed(self, delta: Delta) -> None:
        # groups, endpoints, networks: not the hosts' coming and going
        if delta.whole or delta.groups or delta.endpoints or delta.networks:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.service.enforce()
            except Exception as exc:  # a datapath tool failing: again soon
                log.warning("security groups not enforced, trying again: %s", exc)
                await asyncio.sleep(RETRY)
                self._wake.set()
