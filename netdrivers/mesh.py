"""Networks across hosts: each host says it is alive in the shared store (under a lease),
and keeps every network it has endpoints on tunnelled to exactly the other live hosts with
endpoints on it.

The store is the only channel between hosts. A host that stops renewing its lease (it
crashed, or its link to etcd is cut) drops out of every other host's tunnels within the
lease's time; its endpoints stay in the store, so when it comes back it is tunnelled to
again as it was.
"""

from __future__ import annotations

import asyncio
import logging

from netaddr import IPAddress

from plugstrip.netdrivers.contract import RemoteEndpoint
from plugstrip.netdrivers.service import NetworkService, to_network
from plugstrip.netdrivers.store import Host

log = logging.getLogger("plugstrip.mesh")

LEASE_TTL = 10  # seconds a host stays listed without a heartbeat
INTERVAL = 1.0  # seconds between heartbeats and syncs
FULL_SYNC = 30  # every this many syncs, program even what looks unchanged (heals drift)


class Mesh:
    def __init__(
        self,
        service: NetworkService,
        address: IPAddress,
        changes: asyncio.Event,
        ttl: int = LEASE_TTL,
        interval: float = INTERVAL,
    ) -> None:
        self.service = service
        self.me = Host(service.host, address)
        self.ttl = ttl
        self.interval = interval
        self._applied: dict[str, frozenset[RemoteEndpoint]] = {}
        # Set when endpoints here come or go: the service is made with ``changes.set`` as
        # its change callback, by whoever makes both.
        self._wake = changes
        self._task: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        self._watching = asyncio.create_task(self._watch())

    def kick(self) -> None:
        """Sync now: an endpoint came or went here (maybe the first on a network)."""
        self._wake.set()

    async def close(self) -> None:
        """Stop, and leave: other hosts drop their tunnels to this one at once."""
        for task in (self._task, self._watching):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            await self.service.store.deregister_host(self.me.id)
        except ConnectionError as exc:
            log.warning(
                "could not leave the cluster (others drop this host when its lease ends): %s", exc
            )

    async def _run(self) -> None:
        rounds = 0
        while True:
            self._wake.clear()  # before reading: a change seen during this round wakes the next
            try:
                await self.service.store.register_host(self.me, self.ttl)
                await self.sync(full=rounds % FULL_SYNC == 0)
                rounds += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd away, a driver failing: try again next round
                log.warning("mesh sync failed: %s", exc)
                self._applied.clear()
                if self._watching is not None:  # a watch on a dead connection may just hang
                    self._watching.cancel()
                    self._watching = asyncio.create_task(self._watch())
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass

    async def _watch(self) -> None:
        """Sync as soon as another host changes something (the poll above is the floor):
        a container started elsewhere is reachable from here in milliseconds."""
        while True:
            try:
                async for _ in self.service.store.changes():
                    self.kick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("watch ended, watching again: %s", exc)
            await asyncio.sleep(self.interval)

    async def sync(self, full: bool = False) -> None:
        """Program every network set up here for the endpoints live hosts have on it, and
        take down the datapath of networks deleted elsewhere."""
        hosts = {h.id: h.address for h in await self.service.store.hosts() if h.id != self.me.id}
        records, every = await self.service.snapshot()
        remotes = self.service.remotes(every, hosts)
        existing = {r.id for r in records}
        for record in self.service.set_up_here():
            if record.id not in existing:
                log.info("network %s was deleted: removing it here", record.name)
                self._applied.pop(record.id, None)
                await self.service.remove_datapath(record)
                continue
            wanted = frozenset(remotes.get(record.id, ()))
            if full or self._applied.get(record.id) != wanted:
                await self.service.driver(record.driver).set_remotes(to_network(record), wanted)
                self._applied[record.id] = wanted
