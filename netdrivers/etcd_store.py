"""The state store on etcd v3, shared by the plugstrip of every host.

Client: ``aetcd``, a maintained asyncio client over etcd's gRPC API (the JSON gateway
would save the gRPC dependency but turns every value into base64 and every watch into a
long-poll of our own). Each decision is read, decided (the same pure IPAM as SQLite's)
and written in one transaction that compares what it read, so two hosts deciding at once
can't both win: the loser reads again and decides again.

Keys, under a prefix (default ``/plugstrip/``)::

    net/<id>               the network record (JSON)
    name/<name>            -> <id>: one network per name
    vni/<vni>              -> <id>: one network per VNI
    nets                   bumped by every network create/delete: subnets are decided
                           against the whole set, so a create compares it
    alloc/<net>/<owner>    {"address": int, "meta": {...}}
    addr/<net>/<int>       -> <owner>: one owner per address (the integer zero-padded, so a
                           range read gives a window of addresses)
    hint/<net>             the last address handed out (next-fit)
    ver/<net>              bumped by every allocation change: a delete compares it
    host/<id>              {"address": ...}: a live host, under its lease
    sg/<name>              a security group's rules (JSON)
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aetcd
import aetcd.exceptions
from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers import ipam
from plugstrip.netdrivers.ipam import IpamError
from plugstrip.netdrivers.security import Group
from plugstrip.netdrivers.store import (
    Allocation,
    GroupChange,
    Host,
    NetworkRecord,
    NetworkSpec,
    decide_subnets,
    dump_group,
    load_group,
    lowest_free_vni,
)

T = TypeVar("T")
RETRIES = 200  # of one decision that lost (to another host, or to an address it had not read)
WINDOW = 256  # addresses read around where next-fit looks, per allocation
_UNREACHABLE = (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError)


class StoreUnavailable(ConnectionError):
    pass


class EtcdStore:
    def __init__(self, endpoints: list[tuple[str, int]], prefix: str = "/plugstrip/") -> None:
        if not endpoints:
            raise ValueError("etcd: no endpoints")
        self.servers = endpoints
        self.prefix = prefix
        self._client: aetcd.Client | None = None
        # One allocation at a time per network from this process: concurrent ones would
        # all race for the same next address, losing one at a time (N^2 attempts); the
        # compare-and-swap is then only ever contended by other hosts.
        self._allocating: dict[str, asyncio.Lock] = {}
        self._leases: dict[str, int] = {}  # host id -> its lease

    @classmethod
    def from_url(cls, url: str, prefix: str = "/plugstrip/") -> EtcdStore:
        """``etcd://HOST:PORT[,HOST:PORT...]``"""
        if not url.startswith("etcd://"):
            raise ValueError(f"{url!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
        endpoints = []
        for part in url[len("etcd://") :].rstrip("/").split(","):
            host, _, port = part.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{url!r}: {part!r} is not HOST:PORT")
            endpoints.append((host.strip("[]"), int(port)))
        return cls(endpoints, prefix)

    # ---- connection ----------------------------------------------------------------------

    def _where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.servers)

    async def _etcd(self) -> aetcd.Client:
        if self._client is not None:
            return self._client
        errors = []
        for host, port in self.servers:  # the first that answers
            client = aetcd.Client(host=host, port=port, timeout=5, connect_wait_timeout=3)
            try:
                await client.connect()
                await client.status()
            except Exception as exc:
                errors.append(f"{host}:{port}: {exc or type(exc).__name__}")
                await client.close()
                continue
            self._client = client
            return client
        raise StoreUnavailable(f"plugstrip cannot reach etcd at {'; '.join(errors)}")

    async def _call(self, fn: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        client = await self._etcd()
        try:
            return await fn(client)
        except _UNREACHABLE as exc:
            await self._drop(client)  # connect again (maybe to another endpoint) next time
            where = self._where()
            raise StoreUnavailable(f"plugstrip cannot reach etcd at {where}: {exc}") from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # not us being cancelled: another caller dropped the connection under this call
            where = self._where()
            raise StoreUnavailable(f"plugstrip cannot reach etcd at {where}") from None

    async def _drop(self, client: aetcd.Client) -> None:
        if self._client is client:  # not one made since by another caller
            await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _key(self, *parts: object) -> bytes:
        return (self.prefix + "/".join(str(p) for p in parts)).encode()

    def _addr_key(self, network_id: str, address: IPAddress | int) -> bytes:
        # zero-padded, so keys sort as the addresses do and a window is one range read
        return self._key("addr", network_id, f"{int(address):010d}")

    async def _decide(self, attempt: Callable[[aetcd.Client], Awaitable[T | None]]) -> T:
        """Run ``attempt`` (read, decide, compare-and-write; None when it lost a race)
        until it wins."""
        for _ in range(RETRIES):
            result = await self._call(attempt)
            if result is not None:
                return result
        raise StoreUnavailable("etcd: too much contention, gave up deciding")

    # ---- networks ------------------------------------------------------------------------

    async def create_network(
        self,
        spec: NetworkSpec,
        pool: IPNetwork = ipam.DEFAULT_RANGE,
        prefix: int = ipam.DEFAULT_PREFIX,
        pool6: IPNetwork = ipam.DEFAULT_RANGE6,
    ) -> NetworkRecord:
        async def attempt(etcd: aetcd.Client) -> NetworkRecord | None:
            guard = await etcd.get(self._key("nets"))
            records = await self._records(etcd)
            if any(r.name == spec.name for r in records):
                raise IpamError("conflict", f"network with name {spec.name} already exists")
            subnet, gateway, subnet6 = decide_subnets(spec, records, pool, prefix, pool6)
            vni = lowest_free_vni({r.vni for r in records})
            record = NetworkRecord(
                uuid.uuid4().hex + uuid.uuid4().hex,
                spec.name,
                spec.driver,
                subnet,
                gateway,
                vni,
                dict(spec.options),
                dict(spec.labels),
                spec.internal,
                time.time(),
                subnet6,
            )
            tx = etcd.transactions
            won, _ = await etcd.transaction(
                failure=[],
                compare=[
                    tx.mod(self._key("nets")) == (guard.mod_revision if guard else 0),
                    tx.create(self._key("name", spec.name)) == 0,
                    tx.create(self._key("vni", vni)) == 0,
                ],
                success=[
                    tx.put(self._key("net", record.id), _b(_dump_record(record))),
                    tx.put(self._key("name", spec.name), _b(record.id)),
                    tx.put(self._key("vni", vni), _b(record.id)),
                    tx.put(self._key("nets"), _b(record.id)),
                ],
            )
            return record if won else None

        return await self._decide(attempt)

    async def _records(self, etcd: aetcd.Client) -> list[NetworkRecord]:
        found = await etcd.get_prefix(self._key("net", ""))
        return sorted((_load_record(kv.value) for kv in found), key=lambda r: r.name)

    async def get_network(self, name_or_id: str) -> NetworkRecord:
        async def get(etcd: aetcd.Client) -> NetworkRecord:
            records = await self._records(etcd)
            for r in records:
                if name_or_id in (r.id, r.name):
                    return r
            matches = [r for r in records if name_or_id and r.id.startswith(name_or_id)]
            if len(matches) != 1:
                raise IpamError("not_found", f"network {name_or_id} not found")
            return matches[0]

        return await self._call(get)

    async def list_networks(self) -> list[NetworkRecord]:
        return await self._call(self._records)

    async def delete_network(self, network_id: str) -> None:
        async def attempt(etcd: aetcd.Client) -> bool | None:
            found = await etcd.get(self._key("net", network_id))
            if found is None:
                return True
            record = _load_record(found.value)
            version = await etcd.get(self._key("ver", network_id))
            users = await etcd.get_prefix(self._key("alloc", network_id, ""), keys_only=True)
            if users:
                raise IpamError(
                    "conflict", f"network {network_id} has {users.count} active endpoints"
                )
            tx = etcd.transactions
            won, _ = await etcd.transaction(
                failure=[],
                compare=[
                    tx.mod(self._key("ver", network_id)) == (version.mod_revision if version else 0)
                ],
                success=[
                    tx.delete(self._key("net", network_id)),
                    tx.delete(self._key("name", record.name)),
                    tx.delete(self._key("vni", record.vni)),
                    tx.delete(self._key("hint", network_id)),
                    tx.delete(self._key("ver", network_id)),
                    tx.put(self._key("nets"), _b(network_id)),
                ],
            )
            return True if won else None

        await self._decide(attempt)

    # ---- addresses -----------------------------------------------------------------------

    async def allocate(
        self,
        network_id: str,
        owner: str,
        requested: IPAddress | None = None,
        meta: dict[str, Any] | None = None,
    ) -> IPAddress:
        async def attempt(etcd: aetcd.Client) -> IPAddress | None:
            found = await etcd.get(self._key("net", network_id))
            if found is None:
                raise IpamError("not_found", f"network {network_id} not found")
            record = _load_record(found.value)
            held = await etcd.get(self._key("alloc", network_id, owner))
            if held is not None:  # idempotent per (owner, network)
                mine = IPAddress(json.loads(held.value)["address"], 4)
                if requested is not None and requested != mine:
                    raise IpamError("conflict", f"{owner} already has {mine} on this network")
                return mine
            hint = await etcd.get(self._key("hint", network_id))
            after = int(hint.value) if hint else None
            first = record.subnet.first + 1
            for start in {after + 1 if after else first, first}:  # where next-fit looks first
                window = await etcd.get_range(
                    self._addr_key(network_id, start), self._addr_key(network_id, start + WINDOW)
                )
                known.update(_addr_of(kv.key) for kv in window)
            if requested is not None and await etcd.get(self._addr_key(network_id, requested)):
                known.add(int(requested))
            address = ipam.choose_address(
                record.subnet, record.gateway, known.__contains__, requested, after=after
            )
            tx = etcd.transactions
            writes = [
                tx.put(self._addr_key(network_id, address), _b(owner)),
                tx.put(
                    self._key("alloc", network_id, owner),
                    _b(json.dumps({"address": int(address), "meta": meta or {}})),
                ),
                tx.put(self._key("ver", network_id), _b(owner)),
            ]
            if requested is None:
                writes.append(tx.put(self._key("hint", network_id), _b(str(int(address)))))
            won, _ = await etcd.transaction(
                failure=[],
                compare=[
                    tx.version(self._key("net", network_id)) > 0,
                    tx.create(self._addr_key(network_id, address)) == 0,
                    tx.create(self._key("alloc", network_id, owner)) == 0,
                ],
                success=writes,
            )
            if not won and await etcd.get(self._addr_key(network_id, address)):
                known.add(int(address))  # taken beyond the windows read: choose again
            return address if won else None

        known: set[int] = set()  # addresses seen taken, kept across attempts
        async with self._allocating.setdefault(network_id, asyncio.Lock()):
            return await self._decide(attempt)

    async def release(self, network_id: str, owner: str) -> None:
        async def attempt(etcd: aetcd.Client) -> bool | None:
            held = await etcd.get(self._key("alloc", network_id, owner))
            if held is None:
                return True
            address = json.loads(held.value)["address"]
            tx = etcd.transactions
            won, _ = await etcd.transaction(
                failure=[],
                compare=[tx.mod(self._key("alloc", network_id, owner)) == held.mod_revision],
                success=[
                    tx.delete(self._key("alloc", network_id, owner)),
                    tx.delete(self._addr_key(network_id, address)),
                    tx.put(self._key("ver", network_id), _b(owner)),
                ],
            )
            return True if won else None

        await self._decide(attempt)

    async def allocations(self, network_id: str) -> dict[str, IPAddress]:
        return {a.owner: a.address for a in await self.endpoints(network_id=network_id)}

    async def endpoints(
        self, network_id: str | None = None, owner: str | None = None
    ) -> list[Allocation]:
        async def query(etcd: aetcd.Client) -> list[Allocation]:
            where = self._key("alloc", network_id, "") if network_id else self._key("alloc", "")
            out = []
            for kv in await etcd.get_prefix(where):
                net, who = kv.key.decode()[len(self.prefix) :].split("/")[1:3]
                if owner is not None and who != owner:
                    continue
                doc = json.loads(kv.value)
                out.append(Allocation(net, who, IPAddress(doc["address"], 4), doc["meta"]))
            return sorted(out, key=lambda a: (a.network_id, int(a.address)))

        return await self._call(query)

    async def update_meta(self, owner: str, changes: dict[str, Any]) -> None:
        for allocation in await self.endpoints(owner=owner):

            async def attempt(etcd: aetcd.Client, a: Allocation = allocation) -> bool | None:
                key = self._key("alloc", a.network_id, owner)
                held = await etcd.get(key)
                if held is None:
                    return True  # released meanwhile
                doc = json.loads(held.value)
                doc["meta"] = {**doc["meta"], **changes}
                tx = etcd.transactions
                won, _ = await etcd.transaction(
                    failure=[],
                    compare=[tx.mod(key) == held.mod_revision],
                    success=[tx.put(key, _b(json.dumps(doc)))],
                )
                return True if won else None

            await self._decide(attempt)

    # ---- hosts ---------------------------------------------------------------------------

    async def register_host(self, host: Host, ttl: int) -> None:
        async def heartbeat(etcd: aetcd.Client) -> None:
            lease = self._leases.get(host.id)
            if lease is not None:
                reply = await etcd.refresh_lease(lease)
                if reply is not None and reply.TTL > 0:
                    return
            # no lease yet, or it ran out (etcd did not hear from us in time): a new one
            granted = await etcd.lease(ttl)
            self._leases[host.id] = granted.id
            value = json.dumps({"address": str(host.address)})
            await etcd.put(self._key("host", host.id), _b(value), lease=granted)

        await self._call(heartbeat)

    async def deregister_host(self, host_id: str) -> None:
        async def revoke(etcd: aetcd.Client) -> None:
            await etcd.delete(self._key("host", host_id))
            lease = self._leases.pop(host_id, None)
            if lease is not None:
                try:
                    await etcd.revoke_lease(lease)
                except _UNREACHABLE:
                    raise
                except aetcd.exceptions.ClientError:
                    pass  # the lease had run out already

        await self._call(revoke)

    async def groups(self) -> list[Group]:
        async def query(etcd: aetcd.Client) -> list[Group]:
            start = self._key("sg", "")
            rows = await etcd.get_prefix(start)
            return sorted(
                (load_group(kv.key[len(start) :].decode(), kv.value) for kv in rows),
                key=lambda g: g.name,
            )

        return await self._call(query)

    async def change_group(self, name: str, change: GroupChange) -> Group | None:
        key = self._key("sg", name)
        written: list[Group | None] = []

        async def attempt(etcd: aetcd.Client) -> bool | None:
            held = await etcd.get(key)
            new = change(load_group(name, held.value) if held else None)
            tx = etcd.transactions
            won, _ = await etcd.transaction(
                failure=[],
                compare=[tx.mod(key) == held.mod_revision if held else tx.create(key) == 0],
                success=[tx.put(key, _b(dump_group(new))) if new else tx.delete(key)],
            )
            written[:] = [new]
            return True if won else None

        await self._decide(attempt)
        return written[0]

    async def changes(self, *kinds: str) -> AsyncIterator[None]:
        client = await self._etcd()
        wanted = tuple(self._key(kind, "") for kind in kinds)
        try:
            watch = await client.watch_prefix(self._key(""))
            async for event in watch:
                if not wanted or event.kv.key.startswith(wanted):
                    yield
        except _UNREACHABLE as exc:
            await self._drop(client)
            raise StoreUnavailable(
                f"plugstrip cannot reach etcd at {self._where()}: {exc}"
            ) from exc

    async def hosts(self) -> list[Host]:
        async def query(etcd: aetcd.Client) -> list[Host]:
            found = await etcd.get_prefix(self._key("host", ""))
            listed = [
                Host(kv.key.decode().rsplit("/", 1)[1], IPAddress(json.loads(kv.value)["address"]))
                for kv in found
            ]
            return sorted(listed, key=lambda h: h.id)

        return await self._call(query)


def _b(value: str) -> bytes:
    return value.encode()


def _dump_record(r: NetworkRecord) -> str:
    return json.dumps(
        {
            "id": r.id,
            "name": r.name,
            "driver": r.driver,
            "subnet": str(r.subnet),
            "gateway": str(r.gateway),
            "vni": r.vni,
            "options": r.options,
            "labels": r.labels,
            "internal": r.internal,
            "created": r.created,
            "subnet6": str(r.subnet6) if r.subnet6 is not None else None,
        }
    )


def _load_record(raw: bytes) -> NetworkRecord:
    d = json.loads(raw)
    return NetworkRecord(
        d["id"],
        d["name"],
        d["driver"],
        IPNetwork(d["subnet"]),
        IPAddress(d["gateway"]),
        int(d["vni"]),
        d["options"],
        d["labels"],
        bool(d["internal"]),
        float(d["created"]),
        IPNetwork(d["subnet6"]) if d.get("subnet6") else None,
    )


def _addr_of(key: bytes) -> int:
    return int(key.rsplit(b"/", 1)[1])
