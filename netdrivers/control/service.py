"""The network control plane: the store decides, then a driver programs the datapath.

Typed intent in (a spec, an owner and a namespace path), plain records out; no Docker
shapes here. Every operation that writes to the store and the kernel undoes its store
write when the driver fails, so nothing is half-created.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers.control.view import StoreView
from plugstrip.netdrivers.domain import ipam, security
from plugstrip.netdrivers.domain.contract import Driver, Endpoint, Network
from plugstrip.netdrivers.domain.errors import Conflict, Invalid, NotFound, Unavailable
from plugstrip.netdrivers.domain.security import Group, Rule
from plugstrip.netdrivers.stores.store import (
    NO_META,
    Allocation,
    EndpointMeta,
    MetaChange,
    NetworkRecord,
    NetworkSpec,
    Store,
)

READY_WAIT = 5.0  # seconds start waits for the store's state (then reads ask the store)

log = logging.getLogger("plugstrip.netdrivers")
# Interfaces plugstrip puts into a namespace. Not Docker's ``ethN``: dockerd numbers its own
# interfaces from a count it keeps and takes ``eth1`` even where one exists (the connect
# then fails with "file exists"), so Docker's networks and plugstrip's share a namespace.
IFNAME_PREFIX = "ethps"


class PolicyUnavailable(Unavailable):
    """An endpoint's security groups could not be put into its datapath, so it was not
    plugged in: a guarded endpoint is never reachable unguarded (it fails closed)."""


class UnknownDriver(Invalid):
    def __init__(self, driver: str, known: Iterable[str]) -> None:
        super().__init__(f"plugstrip has no network driver {driver!r} (it has {', '.join(known)})")


@dataclass(frozen=True)
class Attachment:
    """One endpoint as the control plane knows it: who holds which address where."""

    network: NetworkRecord
    owner: str
    address: IPAddress
    meta: EndpointMeta

    @property
    def address6(self) -> IPAddress | None:
        return self.network.address6(self.address)

    @property
    def groups(self) -> list[str]:
        """The security groups the endpoint is in (none: open within its network)."""
        return list(self.meta.groups)

    @property
    def allowed(self) -> list[IPAddress]:
        """Addresses it may send from besides its own (its network's aux addresses): in
        its binding, its groups' members, guarded by its groups' rules."""
        return list(self.meta.allowed)

    @property
    def addresses(self) -> list[IPAddress]:
        """Every address it holds or may send from."""
        own = [a for a in (self.address, self.address6) if a is not None]
        return [*own, *self.allowed]

    @property
    def mac(self) -> str:
        # the one it was given (docker-py's ``mac_address``), else Docker's scheme
        return self.meta.mac or mac_for(self.address)


def mac_for(address: IPAddress) -> str:
    """Docker's scheme: 02:42 and the four address bytes; unique as the address is."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)


def to_network(record: NetworkRecord) -> Network:
    return Network(record.id, record.name, record.subnet, record.vni, record.options)


class NetworkService:
    def __init__(
        self,
        store: Store,
        drivers: Mapping[str, Driver],
        pool: IPNetwork = ipam.DEFAULT_RANGE,
        prefix: int = ipam.DEFAULT_PREFIX,
        pool6: IPNetwork = ipam.DEFAULT_RANGE6,
        host: str = "",
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.drivers = dict(drivers)
        self.pool = pool
        self.prefix = prefix
        self.pool6 = pool6
        self.host = host  # this host's id: endpoints carry it, in a store hosts share
        self._here: dict[str, NetworkRecord] = {}  # networks whose datapath is set up here
        # The store's state, followed (once started): reads answer from it, also while the
        # store is away; until it is ready (and in the operator's commands) they ask the store.
        self.view = StoreView(store)
        self._datapath = asyncio.Lock()  # setting up and taking down networks here
        self._enforcing = asyncio.Lock()  # one policy at a time into the drivers
        self.on_change = on_change  # endpoints here came or went (the mesh syncs)

    async def start(self) -> None:
        self.view.start()
        try:
            async with asyncio.timeout(READY_WAIT):
                await self.view.ready.wait()
        except TimeoutError:
            log.warning("the store's state is not read yet: reads ask the store until it is")

    async def _viewed(self) -> bool:
        """Whether reads can come from the view: it is ready, and has every write this
        process made (waited for: they come back through the store's changes in
        milliseconds), so what this process wrote it reads."""
        if not self.view.ready.is_set():
            return False
        await self.view.reached(self.store.last_written)
        return True

    def driver(self, name: str) -> Driver:
        try:
            return self.drivers[name]
        except KeyError:
            raise UnknownDriver(name, self.drivers) from None

    # ---- networks ------------------------------------------------------------------------

    async def create_network(self, spec: NetworkSpec) -> NetworkRecord:
        self.driver(spec.driver)  # an unknown driver is refused before the store is asked
        record = await self.store.create_network(spec, self.pool, self.prefix, self.pool6)
        try:
            await self._ensure_here(record)
        except BaseException:
            await self.store.delete_network(record.id)
            raise
        return record

    async def find(self, name_or_id: str) -> NetworkRecord | None:
        try:
            return await self.store.get_network(name_or_id)
        except NotFound:
            return None

    async def delete_network(self, record: NetworkRecord) -> None:
        await self.store.delete_network(record.id)  # refuses while endpoints remain
        await self.remove_datapath(record)

    async def remove_datapath(self, record: NetworkRecord) -> None:
        """This host's part of a network: on its delete, here or (seen later) elsewhere."""
        async with self._datapath:
            if record.id in self._here:  # not already replaced by a network on its VNI
                await self._remove_here(record)

    async def _remove_here(self, record: NetworkRecord) -> None:
        await self.driver(record.driver).delete_network(to_network(record))
        self._here.pop(record.id, None)

    async def _ensure_here(self, record: NetworkRecord) -> None:
        """Set up the network's datapath on this host, once per process (it may have been
        created on another host, or before a restart). A network deleted elsewhere whose
        VNI was given to this one goes first: a weave network's devices are named by VNI."""
        async with self._datapath:
            if record.id in self._here:
                return
            for old in [r for r in self._here.values() if r.vni == record.vni]:
                await self._remove_here(old)
            await self.driver(record.driver).create_network(to_network(record))
            self._here[record.id] = record

    def set_up_here(self) -> list[NetworkRecord]:
        """The networks whose datapath this process has set up."""
        return list(self._here.values())

    # ---- endpoints -----------------------------------------------------------------------

    async def attach(
        self,
        record: NetworkRecord,
        owner: str,
        netns_path: str | None,
        requested: IPAddress | None = None,
        meta: EndpointMeta = NO_META,
    ) -> Attachment:
        """Give ``owner`` an address on ``record`` and plug it into ``netns_path`` as the
        next free ``ethpsN`` (None: the address only, plugged by :meth:`replug` once the
        namespace exists). Idempotent per (owner, network)."""
        held = await self.attachments(owner)
        mine = next((a for a in held if a.network.id == record.id), None)
        if mine is None:
            used = {a.meta.ifname for a in held}
            ifname = next(n for i in range(4096) if (n := f"{IFNAME_PREFIX}{i}") not in used)
            meta = replace(meta, ifname=ifname, host=self.host)
        else:
            meta = mine.meta
        await self._ensure_here(record)
        address = await self.store.allocate(record.id, owner, requested, meta)
        attachment = Attachment(record, owner, address, meta)
        if netns_path is not None:
            try:
                await self._guard(attachment)
                await self.driver(record.driver).join(
                    to_network(record), self.endpoint(attachment, netns_path)
                )
            except BaseException:
                await self._unplug(attachment)
                await self.store.release(record.id, owner)
                self.on_change()  # its rules, if they were put in, go again
                raise
        self.on_change()
        return attachment

    async def detach(self, record: NetworkRecord, owner: str) -> bool:
        """Unplug and release ``owner`` from ``record``; False if it was not attached."""
        for attachment in await self.attachments(owner):
            if attachment.network.id == record.id:
                await self._unplug(attachment)
                await self.store.release(record.id, owner)
                self.on_change()
                return True
        return False

    async def release_owner(self, owner: str) -> None:
        """Everything ``owner`` holds, gone (its namespace may be gone already)."""
        for attachment in await self.attachments(owner):
            await self._unplug(attachment)
            await self.store.release(attachment.network.id, owner)
            self.on_change()

    async def replug(self, owner: str, netns_path: str) -> None:
        """Plug ``owner``'s endpoints into a (new) namespace: after a holder restarted."""
        for attachment in await self.attachments(owner):
            await self._ensure_here(attachment.network)
            await self._guard(attachment)
            await self.driver(attachment.network.driver).join(
                to_network(attachment.network), self.endpoint(attachment, netns_path)
            )

    async def update_meta(self, owner: str, change: MetaChange) -> None:
        """Change what the store says of ``owner``'s endpoints (its container's id, name)."""
        await self.store.update_meta(owner, change)

    async def close(self) -> None:
        await self.view.close()
        await self.store.close()

    # ---- reads: from the view (also while the store is away), else from the store ----

    async def networks(self) -> list[NetworkRecord]:
        if await self._viewed():
            return sorted(self.view.networks.values(), key=lambda r: r.name)
        return await self.store.list_networks()

    async def attachments(
        self, owner: str | None = None, network: NetworkRecord | None = None
    ) -> list[Attachment]:
        """Endpoints, all or of one owner and/or one network."""
        if not await self._viewed():
            records = {r.id: r for r in await self.store.list_networks()}
            found = await self.store.endpoints(network.id if network else None, owner)
            return [self._attachment(records[a.network_id], a) for a in found]
        view = self.view
        if owner is not None:
            allocations = view.attachments_of(owner)
        elif network is not None:
            allocations = list(view.endpoints.get(network.id, {}).values())
        else:
            allocations = view.every_endpoint()
        return [
            self._attachment(view.networks[a.network_id], a)
            for a in sorted(allocations, key=lambda a: (a.network_id, int(a.address)))
            if network is None or a.network_id == network.id
        ]

    async def snapshot(self) -> tuple[list[NetworkRecord], list[Attachment]]:
        """Every network and every endpoint."""
        return await self.networks(), await self.attachments()

    async def prune(self) -> list[str]:
        """Have each driver remove what it finds of its own that no network or endpoint in
        the store accounts for (a crash half way through a create or a delete)."""
        records, attachments = await self.snapshot()
        removed: list[str] = []
        for name, driver in self.drivers.items():
            networks = [to_network(r) for r in records if r.driver == name]
            endpoints = [self.endpoint(a, "") for a in attachments if a.network.driver == name]
            try:
                removed += await driver.prune(networks, endpoints)
            except ConnectionError as exc:  # OVS not running: nothing of it to clean
                log.info("%s: not pruned: %s", name, exc)
        return removed

    async def owners(self) -> set[str]:
        """The owners of this host's endpoints (others' are theirs to reconcile)."""
        return {a.owner for a in await self.attachments() if self.is_local(a)}

    def is_local(self, endpoint: Allocation | Attachment) -> bool:
        return endpoint.meta.is_on(self.host)

    async def resolve(self, owner: str, name: str) -> list[IPAddress]:
        """Addresses ``name`` (a container name or alias) has on the networks ``owner`` is
        on, of both families: names are scoped to shared networks, as on Docker's
        user-defined networks."""
        wanted = name.lower().rstrip(".")
        found = []
        for own in await self.attachments(owner):  # only the networks it is on are read
            for a in await self.attachments(network=own.network):
                names = [a.meta.name, (a.meta.container or "")[:12], *a.meta.aliases]
                if wanted in (n.lower() for n in names):
                    found += [a.address] if a.address6 is None else [a.address, a.address6]
        return found

    # ---- security groups ------------------------------------------------------------------

    async def groups(self) -> list[Group]:
        if await self._viewed():
            return sorted(self.view.groups.values(), key=lambda g: g.name)
        return await self.store.groups()

    async def create_group(self, name: str) -> Group:
        security.check_name(name)

        def create(current: Group | None) -> Group:
            if current is not None:
                raise Conflict(f"security group {name} already exists")
            return Group(name)

        made = await self.store.change_group(name, create)
        assert made is not None
        return made

    async def allow(self, name: str, rule: Rule) -> Group:
        peer = rule.peer_group()
        if peer is not None and peer != name:
            await self.check_groups([peer])

        def add(current: Group | None) -> Group:
            if current is None:
                raise NotFound(f"security group {name} not found")
            if rule in current.rules:
                return current
            return Group(name, tuple(sorted((*current.rules, rule))))

        changed = await self.store.change_group(name, add)
        assert changed is not None
        return changed

    async def revoke(self, name: str, rule: Rule) -> Group:
        def drop(current: Group | None) -> Group:
            if current is None:
                raise NotFound(f"security group {name} not found")
            if rule not in current.rules:
                raise NotFound(f"security group {name} has no rule {rule.describe()}")
            return Group(name, tuple(r for r in current.rules if r != rule))

        changed = await self.store.change_group(name, drop)
        assert changed is not None
        return changed

    async def delete_group(self, name: str) -> None:
        """Remove a group no endpoint is in and no other group's rule names."""
        users = await self.group_members(name)
        if users:
            raise Conflict(f"security group {name} is in use by {len(users)} endpoint(s)")
        for group in await self.groups():
            if group.name != name and any(r.peer_group() == name for r in group.rules):
                raise Conflict(f"security group {name} is named by a rule of group {group.name}")

        def delete(current: Group | None) -> None:
            if current is None:
                raise NotFound(f"security group {name} not found")
            return None

        await self.store.change_group(name, delete)

    async def group_members(self, name: str) -> list[Attachment]:
        return [a for a in await self.attachments() if name in a.groups]

    async def check_groups(self, names: list[str]) -> None:
        """Refuse groups that do not exist (before anything is made for an endpoint)."""
        known = {g.name for g in await self.groups()} if names else set()
        if not known.issuperset(names):  # the view may not have a group just made: ask
            known = {g.name for g in await self.store.groups()}  # the store before refusing
        for name in names:
            if name not in known:
                raise Invalid(f"security group {name} not found")

    async def enforce(self, only: str | None = None) -> None:
        """Program every driver (or the one named ``only``) with this host's security-group
        policy, from the groups and every endpoint (sources may be on any host)."""
        async with self._enforcing:
            groups = {g.name: g for g in await self.groups()}
            every = await self.attachments()
            failed = []
            for name, driver in self.drivers.items():  # one datapath failing stops no other
                if only is not None and name != only:
                    continue
                endpoints = [
                    (address, a.groups, self.is_local(a) and a.network.driver == name)
                    for a in every
                    for address in a.addresses
                ]
                bindings = [
                    security.binding(a.network.id, a.owner, a.mac, a.addresses)
                    for a in every
                    if self.is_local(a) and a.network.driver == name
                ]
                try:
                    await driver.set_policy(security.policy(groups, endpoints, bindings))
                except Exception as exc:
                    failed.append(f"{name}: {exc}")
            if failed:
                raise RuntimeError("; ".join(failed))

    async def counts(self) -> dict[str, list[security.Count]]:
        """Each driver's datapath counters (a driver whose datapath cannot be read: none,
        and a warning)."""
        out = {}
        for name, driver in self.drivers.items():
            try:
                out[name] = await driver.counts()
            except Exception as exc:
                log.warning("%s: counters not read: %s", name, exc)
                out[name] = []
        return out

    async def _guard(self, attachment: Attachment) -> None:
        """Before an endpoint is plugged in, its port's binding and its groups' rules are
        in its datapath (the guard's loop would program them only after it is reachable);
        if they cannot be, it is not plugged in."""
        try:
            await self.enforce(only=attachment.network.driver)
        except Exception as exc:
            what = (
                f"security groups {', '.join(attachment.groups)}"
                if attachment.groups
                else "its port's binding to its addresses"
            )
            raise PolicyUnavailable(
                f"{what} cannot be enforced here, so the endpoint is not plugged in: {exc}"
            ) from None

    @staticmethod
    def endpoint(attachment: Attachment, netns_path: str) -> Endpoint:
        subnet = attachment.network.subnet
        return Endpoint(
            attachment.network.id,
            attachment.owner,
            attachment.address,
            subnet.prefixlen,
            attachment.mac,
            netns_path,
            ifname=attachment.meta.ifname or "eth0",
            address6=attachment.address6,
            prefixlen6=attachment.network.subnet6.prefixlen if attachment.network.subnet6 else 64,
            allowed=tuple(attachment.allowed),
        )

    async def _unplug(self, attachment: Attachment) -> None:
        # The container end goes with the host end (or with its namespace): no path needed.
        await self.driver(attachment.network.driver).leave(
            to_network(attachment.network), self.endpoint(attachment, "")
        )

    @staticmethod
    def _attachment(record: NetworkRecord, allocation: Allocation) -> Attachment:
        return Attachment(record, allocation.owner, allocation.address, allocation.meta)
