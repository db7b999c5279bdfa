"""Spare holders, made and started ahead of time.

Starting a container is most of what `docker run` costs (about 200 ms here), and a
container on a plugstrip network needs two: its holder and itself. A create that moves
nothing to its holder (no ports, DNS, hostname, extra hosts: most of them) takes a
running spare instead, so it costs about what a container on Docker's own network
costs; the pool is topped up in the background. Spares are plain holders on Docker's
bridge. A clean stop removes them (a holder left running would be a leftover once
plugstrip is gone); ones a crash left behind are adopted by the next plugstrip.
"""

from __future__ import annotations

import asyncio
import logging

from plugstrip.adapters.network import holder as holders
from plugstrip.proxy.docker_api import DockerApi

log = logging.getLogger("plugstrip.network")

DEFAULT_SIZE = 2  # enough for back-to-back runs; each spare is an idle pause process


class HolderPool:
    def __init__(self, api: DockerApi, size: int) -> None:
        self.api = api
        self.size = size
        self._spares: list[str] = []
        self._refill: asyncio.Task[None] | None = None

    def take(self) -> str | None:
        """A running spare holder, now the caller's; None when there is none."""
        spare = self._spares.pop() if self._spares else None
        self.top_up()
        return spare

    def adopt(self, holder_id: str) -> bool:
        """Keep an idle holder (found at start-up) as a spare, if there is room."""
        if len(self._spares) >= self.size or holder_id in self._spares:
            return False
        self._spares.append(holder_id)
        return True

    def forget(self, holder_id: str) -> None:
        if holder_id in self._spares:
            self._spares.remove(holder_id)

    def __contains__(self, holder_id: object) -> bool:
        return holder_id in self._spares

    def top_up(self) -> None:
        if self.size and (self._refill is None or self._refill.done()):
            self._refill = asyncio.create_task(self._fill())

    async def _fill(self) -> None:
        while len(self._spares) < self.size:
            try:
                await holders.ensure_image(self.api)
                created = await self.api.call(
                    "POST",
                    "/containers/create",
                    holders.plain_request(on_bridge=True),
                    params={"name": holders.new_name()},
                )
                await self.api.call("POST", f"/containers/{created['Id']}/start")
            except Exception as exc:  # the pool is an optimisation: creates still work
                log.warning("could not make a spare network holder: %s", exc)
                return
            self._spares.append(str(created["Id"]))

    async def close(self) -> None:
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.gather(self._refill, return_exceptions=True)
        spares, self._spares = self._spares, []
        for spare in spares:
            try:
                await self.api.call(
                    "DELETE", f"/containers/{spare}", params={"force": "1"}, ok_missing=True
                )
            except Exception as exc:  # the daemon is away: the next plugstrip adopts it
                log.warning("spare network holder %s left: %s", spare[:12], exc)
