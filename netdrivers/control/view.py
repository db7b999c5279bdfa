"""What a host knows of the store, in memory, fed by the store's changes.

One read of the whole at start (again only if the store lost the changes since: etcd
compacted them), then every change applied in revision order; after a lost connection the
changes resume from the revision reached. Readers (the mesh, security groups, names,
inspects) read this, not the store, so a change costs every host the change, not a read of
everything. Listeners hear what changed, as a :class:`Delta`, after it is applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from plugstrip.netdrivers.domain.security import Group
from plugstrip.netdrivers.stores.store import (
    Allocation,
    Host,
    NetworkRecord,
    Store,
    StoreChange,
    StoreState,
)

log = logging.getLogger("plugstrip.view")

RETRY = 1.0  # seconds before following again after the store was lost
CATCH_UP = 5.0  # seconds a reader waits for a write of its own to come back through


@dataclass
class Delta:
    """What one step changed: endpoints by (network id, owner), networks and hosts by id,
    whether any group did; ``whole`` when the state was read whole (anything may have)."""

    whole: bool = False
    endpoints: set[tuple[str, str]] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    groups: bool = False


class StoreView:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.revision = 0
        self.networks: dict[str, NetworkRecord] = {}
        self.endpoints: dict[str, dict[str, Allocation]] = {}  # network id -> owner ->
        self.hosts: dict[str, Host] = {}
        self.groups: dict[str, Group] = {}
        self.owners: dict[str, set[str]] = {}  # owner -> the networks it is on
        self.on_host: dict[str, set[tuple[str, str]]] = {}  # host id -> its endpoints' keys
        self.ready = asyncio.Event()  # set once the whole was read
        self._listeners: list[Callable[[Delta], None]] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    def listen(self, listener: Callable[[Delta], None]) -> None:
        """Call ``listener`` with every step's delta (in the loop, after it is applied)."""
        self._listeners.append(listener)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def reached(self, revision: int) -> None:
        """Return once the view has applied ``revision`` (the store's revision of a write
        this process made: read-your-writes), or after ``CATCH_UP`` if it lags."""
        if self.revision >= revision:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, waiter))
        try:
            async with asyncio.timeout(CATCH_UP):
                await waiter
        except TimeoutError:
            log.warning("the store's changes lag: revision %d not seen in %ss", revision, CATCH_UP)

    def attachments_of(self, owner: str) -> list[Allocation]:
        return [self.endpoints[n][owner] for n in sorted(self.owners.get(owner, ()))]

    def every_endpoint(self) -> list[Allocation]:
        return [a for owners in self.endpoints.values() for a in owners.values()]

    async def _run(self) -> None:
        while True:
            since = self.revision if self.ready.is_set() else None
            try:
                async for step in self.store.follow(since):
                    delta = self._whole(step) if isinstance(step, StoreState) else self._one(step)
                    self._advanced(step.revision, delta)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd away or the watch lost: resume from here
                log.warning("store changes not followed, following again: %s", exc)
            await asyncio.sleep(RETRY)

    def _advanced(self, revision: int, delta: Delta) -> None:
        self.revision = revision
        for listener in self._listeners:
            listener(delta)
        due = [w for w in self._waiters if w[0] <= revision]
        self._waiters = [w for w in self._waiters if w[0] > revision]
        for _, waiter in due:
            if not waiter.done():
                waiter.set_result(None)

    def _whole(self, state: StoreState) -> Delta:
        before = (set(self.networks), set(self.hosts))
        self.networks = {r.id: r for r in state.networks}
        self.hosts = {h.id: h for h in state.hosts}
        self.groups = {g.name: g for g in state.groups}
        self.endpoints, self.owners, self.on_host = {}, {}, {}
        for allocation in state.endpoints:
            self._put(allocation)
        self.ready.set()
        return Delta(
            whole=True,
            networks=before[0] | set(self.networks),
            hosts=before[1] | set(self.hosts),
            groups=True,
        )

    def _one(self, change: StoreChange) -> Delta:
        if change.kind == "alloc":
            assert isinstance(change.key, tuple)
            self._drop(*change.key)
            if isinstance(change.value, Allocation):
                self._put(change.value)
            return Delta(endpoints={change.key})
        key, value = str(change.key), change.value
        if change.kind == "net":
            self.networks.pop(key, None)
            if isinstance(value, NetworkRecord):
                self.networks[key] = value
            return Delta(networks={key})
        if change.kind == "host":
            self.hosts.pop(key, None)
            if isinstance(value, Host):
                self.hosts[key] = value
            return Delta(hosts={key})
        self.groups.pop(key, None)
        if isinstance(value, Group):
            self.groups[key] = value
        return Delta(groups=True)

    def _put(self, a: Allocation) -> None:
        self.endpoints.setdefault(a.network_id, {})[a.owner] = a
        self.owners.setdefault(a.owner, set()).add(a.network_id)
        self.on_host.setdefault(a.meta.host or "", set()).add((a.network_id, a.owner))

    def _drop(self, network_id: str, owner: str) -> None:
        old = self.endpoints.get(network_id, {}).pop(owner, None)
        if old is None:
            return
        if not self.endpoints[network_id]:
            del self.endpoints[network_id]
        self.owners[owner].discard(network_id)
        if not self.owners[owner]:
            del self.owners[owner]
        host = old.meta.host or ""
        self.on_host[host].discard((network_id, owner))
        if not self.on_host[host]:
            del self.on_host[host]
