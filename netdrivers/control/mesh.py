"""Networks across hosts: each host says it is alive in the shared store (a lease it keeps
alive), and keeps every network set up here tunnelled to exactly the other live hosts'
endpoints on it.

The store is the only channel between hosts, and the mesh reads it only through the
service's view: a change elsewhere costs this host that change (an endpoint's entry, or a
host's endpoints when the host came or went), programmed into the driver as such. A host
that stops renewing its lease (it crashed, or its link to etcd is cut) drops out of every
other host's tunnels when the lease runs out; its endpoints stay in the store, so when it
comes back it is tunnelled to again as it was.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter

from netaddr import IPAddress

from plugstrip.netdrivers.control.service import Attachment, NetworkService, to_network
from plugstrip.netdrivers.control.view import Delta
from plugstrip.netdrivers.domain.contract import RemoteChange, RemoteEndpoint
from plugstrip.netdrivers.stores.store import Allocation, Host, NetworkRecord

log = logging.getLogger("plugstrip.mesh")

LEASE_TTL = 10  # seconds a host stays listed without a keep-alive
RETRY = 1.0  # seconds before keeping the lease alive again after the store was lost
FULL_SYNC = 30.0  # seconds between programming even what looks unchanged (heals drift)


class Mesh:
    def __init__(
        self,
        service: NetworkService,
        address: IPAddress,
        changes: asyncio.Event,
        ttl: int = LEASE_TTL,
    ) -> None:
        self.service = service
        self.me = Host(service.host, address)
        self.ttl = ttl
        # Per network set up here: the remote endpoints programmed, by owner.
        self._applied: dict[str, dict[str, RemoteEndpoint]] = {}
        self._dirty = Delta()  # what changed in the view since the last sync
        # Set when endpoints here come or go (the service is made with ``changes.set``
        # among its change callbacks, by whoever makes both) and when the view changed.
        self._wake = changes
        self._tasks: list[asyncio.Task[None]] = []
        service.view.listen(self._changed)

    def start(self) -> None:
        self._wake.set()
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._alive())]

    async def close(self) -> None:
        """Stop, and leave: other hosts drop their tunnels to this one at once."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.service.store.deregister_host(self.me.id)
        except ConnectionError as exc:
            log.warning(
                "could not leave the cluster (others drop this host when its lease ends): %s", exc
            )

    def _changed(self, delta: Delta) -> None:
        dirty = self._dirty
        dirty.whole |= delta.whole
        dirty.endpoints |= delta.endpoints
        dirty.networks |= delta.networks
        dirty.hosts |= delta.hosts
        if delta.whole or delta.endpoints or delta.networks or delta.hosts:
            self._wake.set()

    async def _alive(self) -> None:
        while True:
            try:
                await self.service.store.keep_alive(self.me, self.ttl)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd away: keep trying; others drop us meanwhile
                log.warning("host lease not kept alive: %s", exc)
            await asyncio.sleep(RETRY)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        healed = loop.time() - random.uniform(0, FULL_SYNC)  # hosts do not heal in step
        while True:
            # Until a change, or the heal is due: on its own clock, as a heal left to the
            # next change would add its cost to that change's convergence.
            try:
                async with asyncio.timeout_at(healed + FULL_SYNC):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            full = loop.time() - healed >= FULL_SYNC
            try:
                await self.sync(full)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a driver failing: everything again next round
                log.warning("mesh sync failed: %s", exc)
                self._applied.clear()
                await asyncio.sleep(RETRY)
                self._wake.set()
                continue
            if full:
                healed = loop.time()

    async def sync(self, full: bool = False) -> None:
        """Program every network set up here with what changed of its remote endpoints
        (and, ``full``, the whole set programmed: heals the datapath's drift), and take
        down the datapath of networks deleted elsewhere."""
        view = self.service.view
        if not view.ready.is_set():
            return
        await view.reached(self.service.store.last_written)  # this process's own writes
        dirty, self._dirty = self._dirty, Delta()
        keys = set(dirty.endpoints)
        for host in dirty.hosts:
            keys |= view.on_host.get(host, set())
        here = {r.id: r for r in self.service.set_up_here()}
        local = view.on_host.get(self.me.id, set()) | view.on_host.get("", set())
        mine = {network_id for network_id, _ in local}  # networks with endpoints here
        for record in here.values():
            if record.id not in view.networks:
                # The view may not have it yet: made on another host, attached to here
                # from the store. Only the store can say it is gone.
                if await self.service.find(record.id) is not None:
                    continue  # its own change wakes the mesh when the view has it
                log.info("network %s was deleted: removing it here", record.name)
                self._applied.pop(record.id, None)
                await self.service.remove_datapath(record)
                continue
            if record.id not in mine:  # no endpoint here (any more): no tunnels
                if self._applied.pop(record.id, None) is not None:
                    await self.service.driver(record.driver).set_remotes(to_network(record), [])
                continue
            applied = self._applied.get(record.id)
            if applied is None or dirty.whole:  # new here, or anything may differ
                owners = set(view.endpoints.get(record.id, {})) | set(applied or {})
                await self._program(record, owners, applied is None)
            else:
                owners = {owner for network_id, owner in keys if network_id == record.id}
                if owners:
                    await self._program(record, owners, False)
            if full and applied is not None:  # the datapath may have drifted, not the view
                remotes = list(self._applied[record.id].values())
                await self.service.driver(record.driver).set_remotes(to_network(record), remotes)
        for gone in set(self._applied) - set(here):
            del self._applied[gone]

    async def _program(self, record: NetworkRecord, owners: set[str], whole: bool) -> None:
        """Bring ``owners``' entries on ``record`` up to the view; ``whole``: program the
        network's entire set (new here, or healing), else only what changed."""
        applied = self._applied.setdefault(record.id, {})
        before = Counter(r.host for r in applied.values())
        added, removed = [], []
        endpoints = self.service.view.endpoints.get(record.id, {})
        for owner in owners:
            old, new = applied.get(owner), self._remote(endpoints.get(owner))
            if old == new:
                continue
            if old is not None:
                removed.append(old)
                del applied[owner]
            if new is not None:
                added.append(new)
                applied[owner] = new
        network = to_network(record)
        driver = self.service.driver(record.driver)
        if whole:
            await driver.set_remotes(network, list(applied.values()))
            return
        after = Counter(r.host for r in applied.values())
        change = RemoteChange(
            tuple(added),
            tuple(removed),
            tuple(sorted(set(after) - set(before))),
            tuple(sorted(set(before) - set(after))),
        )
        if change:
            await driver.change_remotes(network, change)

    def _remote(self, a: Allocation | None) -> RemoteEndpoint | None:
        """What this host's datapath needs of endpoint ``a``: None if it is here, or on a
        host that is not live."""
        if a is None or self.service.is_local(a):
            return None
        host = self.service.view.hosts.get(a.meta.host or "")
        if host is None:
            return None
        endpoint = Attachment(self.service.view.networks[a.network_id], a.owner, a.address, a.meta)
        return RemoteEndpoint(a.address, endpoint.mac, host.address, endpoint.address6)
