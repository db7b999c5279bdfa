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
import aetcd.rtypes
import aetcd.utils
import grpc
from aetcd import rpc
from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers.domain import ipam
from plugstrip.netdrivers.domain.errors import Conflict, NotFound, Unavailable
from plugstrip.netdrivers.domain.security import Group
from plugstrip.netdrivers.stores.store import (
    NO_META,
    Allocation,
    EndpointMeta,
    GroupChange,
    Host,
    Kind,
    MetaChange,
    NetworkRecord,
    NetworkSpec,
    StoreChange,
    StoreState,
    decide_subnets,
    dump_group,
    load_group,
    lowest_free_vni,
)

T = TypeVar("T")
RETRIES = 200  # of one decision that lost (to another host, or to an address it had not read)
WINDOW = 256  # addresses read around where next-fit looks, per allocation
_UNREACHABLE = (aetcd.exceptions.ConnectionFailedError, aetcd.exceptions.ConnectionTimeoutError)
PAGE = 2000  # keys per read of the whole state (gRPC refuses answers over 4 MB)
_CHANNEL = {
    # A connection whose peer went silent (a host cut off) fails its calls and ends its
    # watch within about 20 s, instead of a watch waiting for ever; etcd refuses pings more
    # often than every 5 s.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
}
_LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)  # as aetcd maps them
_KINDS: dict[str, Kind] = {"net": "net", "alloc": "alloc", "host": "host", "sg": "sg"}


class StoreUnavailable(Unavailable):
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
        self.last_written = 0

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

    def _lost(self, exc: BaseException | None = None) -> StoreUnavailable:
        detail = f": {exc}" if exc is not None else ""
        return StoreUnavailable(f"plugstrip cannot reach etcd at {self._where()}{detail}")

    async def _etcd(self) -> aetcd.Client:
        if self._client is not None:
            return self._client
        errors = []
        for host, port in self.servers:  # the first that answers
            client = aetcd.Client(
                host=host, port=port, timeout=5, connect_wait_timeout=3, options=_CHANNEL
            )
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
            raise self._lost(exc) from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # not us being cancelled: another caller dropped the connection under this call
            raise self._lost() from None

    async def _drop(self, client: aetcd.Client) -> None:
        if self._client is client:  # not one made since by another caller
            await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _commit(
        self, etcd: aetcd.Client, compare: list[Any], success: list[Any], failure: list[Any]
    ) -> bool:
        """One transaction; True if it won. Its revision is remembered (``last_written``)."""
        won, responses = await etcd.transaction(compare=compare, success=success, failure=failure)
        if won:
            self._written(_revision_of(responses[0]))
        return bool(won)

    def _written(self, revision: int) -> None:
        self.last_written = max(self.last_written, revision)

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
                raise Conflict(f"network with name {spec.name} already exists")
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
                dict(spec.aux),
            )
            tx = etcd.transactions
            won = await self._commit(
                etcd,
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
        found = await self._prefix(etcd, "net", "")
        return sorted((_load_record(kv.value) for kv in found), key=lambda r: r.name)

    async def get_network(self, name_or_id: str) -> NetworkRecord:
        async def get(etcd: aetcd.Client) -> NetworkRecord:
            records = await self._records(etcd)
            for r in records:
                if name_or_id in (r.id, r.name):
                    return r
            matches = [r for r in records if name_or_id and r.id.startswith(name_or_id)]
            if len(matches) != 1:
                raise NotFound(f"network {name_or_id} not found")
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
                raise Conflict(f"network {network_id} has {users.count} active endpoints")
            tx = etcd.transactions
            won = await self._commit(
                etcd,
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
        meta: EndpointMeta = NO_META,
    ) -> IPAddress:
        async def attempt(etcd: aetcd.Client) -> IPAddress | None:
            found = await etcd.get(self._key("net", network_id))
            if found is None:
                raise NotFound(f"network {network_id} not found")
            record = _load_record(found.value)
            held = await etcd.get(self._key("alloc", network_id, owner))
            if held is not None:  # idempotent per (owner, network)
                mine = IPAddress(json.loads(held.value)["address"], 4)
                if requested is not None and requested != mine:
                    raise Conflict(f"{owner} already has {mine} on this network")
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
                record.subnet,
                record.gateway,
                known.__contains__,
                requested,
                after=after,
                reserved=record.reserved(),
            )
            tx = etcd.transactions
            writes = [
                tx.put(self._addr_key(network_id, address), _b(owner)),
                tx.put(
                    self._key("alloc", network_id, owner),
                    _b(json.dumps({"address": int(address), "meta": meta.to_json()})),
                ),
                tx.put(self._key("ver", network_id), _b(owner)),
            ]
            if requested is None:
                writes.append(tx.put(self._key("hint", network_id), _b(str(int(address)))))
            won = await self._commit(
                etcd,
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
            won = await self._commit(
                etcd,
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
            where = ("alloc", network_id, "") if network_id else ("alloc", "")
            found = [self._record_of(kv) for kv in await self._prefix(etcd, *where)]
            out = [a for a in found if owner in (None, a.owner)]
            return sorted(out, key=lambda a: (a.network_id, int(a.address)))

        return await self._call(query)

    async def update_meta(self, owner: str, change: MetaChange) -> None:
        for allocation in await self.endpoints(owner=owner):

            async def attempt(etcd: aetcd.Client, a: Allocation = allocation) -> bool | None:
                key = self._key("alloc", a.network_id, owner)
                held = await etcd.get(key)
                if held is None:
                    return True  # released meanwhile
                doc = json.loads(held.value)
                doc["meta"] = change(EndpointMeta.from_json(doc["meta"])).to_json(doc["meta"])
                tx = etcd.transactions
                won = await self._commit(
                    etcd,
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
            put = await etcd.put(self._key("host", host.id), _b(value), lease=granted)
            self._written(put.header.revision)

        await self._call(heartbeat)

    async def deregister_host(self, host_id: str) -> None:
        async def revoke(etcd: aetcd.Client) -> None:
            deleted = await etcd.delete(self._key("host", host_id))
            if deleted is not None:
                self._written(deleted.header.revision)
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
            rows = await self._prefix(etcd, "sg", "")
            return sorted((self._record_of(kv) for kv in rows), key=lambda g: g.name)

        return await self._call(query)

    async def change_group(self, name: str, change: GroupChange) -> Group | None:
        key = self._key("sg", name)
        written: list[Group | None] = []

        async def attempt(etcd: aetcd.Client) -> bool | None:
            held = await etcd.get(key)
            new = change(load_group(name, held.value) if held else None)
            tx = etcd.transactions
            won = await self._commit(
                etcd,
                failure=[],
                compare=[tx.mod(key) == held.mod_revision if held else tx.create(key) == 0],
                success=[tx.put(key, _b(dump_group(new))) if new else tx.delete(key)],
            )
            written[:] = [new]
            return True if won else None

        await self._decide(attempt)
        return written[0]

    async def keep_alive(self, host: Host, ttl: int) -> None:
        """A lease with ``host``'s key on it, kept alive on one stream (a message every
        third of the lease, etcd's keep-alive), made anew if it ran out (etcd did not hear
        from this host in time). Raises when etcd is lost."""
        client = await self._etcd()
        try:
            while True:
                await self.register_host(host, ttl)  # a lease, the key on it
                lease = self._leases[host.id]
                if not await self._keep(client, lease, ttl):
                    continue
        except (aetcd.exceptions.ClientError, grpc.RpcError, TimeoutError) as exc:
            await self._drop(client)
            raise self._lost(exc) from exc

    @staticmethod
    async def _keep(client: aetcd.Client, lease: int, ttl: int) -> bool:
        """Keep ``lease`` alive until it runs out (False) or the stream fails (raises)."""

        async def asks() -> AsyncIterator[rpc.LeaseKeepAliveRequest]:
            while True:
                yield rpc.LeaseKeepAliveRequest(ID=lease)
                await asyncio.sleep(ttl / 3)

        stream = client.leasestub.LeaseKeepAlive(asks(), metadata=client.metadata)
        try:
            while True:
                async with asyncio.timeout(ttl / 3 + 5):
                    reply = await stream.read()
                if reply is grpc.aio.EOF:
                    raise ConnectionError("etcd ended the lease keep-alive stream")
                if reply.TTL <= 0:
                    return False
        finally:
            stream.cancel()

    async def follow(self, since: int | None = None) -> AsyncIterator[StoreState | StoreChange]:
        """The whole state read in pages at one revision, then one watch of the prefix
        from the revision after it, each event a change; after a lost connection, from
        where it was (``since``), unless etcd compacted that away: then the whole again."""
        client = await self._etcd()
        try:
            while True:
                if since is None:
                    state = await self._read_state(client)
                    since = state.revision
                    yield state
                try:
                    watch = await client.watch_prefix(self._key(""), start_revision=since + 1)
                    async for event in watch:
                        since = event.kv.mod_revision
                        change = self._change(event)
                        if change is not None:
                            yield change
                except aetcd.exceptions.RevisionCompactedError:
                    since = None  # what was missed is gone: read it all again
                    continue
                raise ConnectionError("etcd ended the watch")
        except _UNREACHABLE as exc:
            await self._drop(client)
            raise self._lost(exc) from exc

    async def _read_state(self, client: aetcd.Client) -> StoreState:
        kinds: dict[Kind, list[Any]] = {"net": [], "alloc": [], "host": [], "sg": []}
        revision, kvs = await self._range(client, self._key(""))
        for kv in kvs:
            parsed = self._parse(kv.key, kv.value)
            if parsed is not None:
                kinds[parsed[0]].append(parsed[2])
        return StoreState(revision, kinds["net"], kinds["alloc"], kinds["host"], kinds["sg"])

    async def _range(self, client: aetcd.Client, prefix: bytes) -> tuple[int, list[Any]]:
        """The keys under ``prefix``, read ``PAGE`` at a time, all at the first page's
        revision (a consistent whole however many pages), and that revision."""
        start, end = prefix, aetcd.utils.prefix_range_end(prefix)
        revision, found = 0, []
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=PAGE, revision=revision)
            try:  # aetcd's get_prefix has no limit: its stub, and its errors, by hand
                page = await client.kvstub.Range(request, timeout=30, metadata=client.metadata)
            except grpc.aio.AioRpcError as exc:
                lost = exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                error = (
                    aetcd.exceptions.ConnectionFailedError if lost else aetcd.exceptions.ClientError
                )
                raise error(exc.details()) from exc
            revision = revision or page.header.revision
            found += page.kvs
            if not page.more:
                return revision, found
            start = page.kvs[-1].key + b"\0"

    async def _prefix(self, client: aetcd.Client, *parts: object) -> list[Any]:
        """Every key-value under a prefix, read in pages."""
        return (await self._range(client, self._key(*parts)))[1]

    def _change(self, event: aetcd.rtypes.Event) -> StoreChange | None:
        deleted = event.kind == aetcd.rtypes.EventKind.DELETE
        parsed = self._parse(event.kv.key, None if deleted else event.kv.value)
        if parsed is None:
            return None
        kind, key, value = parsed
        return StoreChange(event.kv.mod_revision, kind, key, value)

    def _record_of(self, kv: Any) -> Any:
        """The record a key of a followed kind holds."""
        parsed = self._parse(kv.key, kv.value)
        assert parsed is not None
        return parsed[2]

    def _parse(
        self, raw_key: bytes, value: bytes | None
    ) -> tuple[Kind, str | tuple[str, str], Any] | None:
        """A key (and its value; None: removed) as a record of a kind hosts follow; None
        for the keys only decisions read (names, VNIs, addresses, hints, versions)."""
        parts = raw_key[len(self.prefix) :].decode().split("/")
        kind = _KINDS.get(parts[0])
        if kind is None:
            return None
        if kind == "alloc":
            key: str | tuple[str, str] = (parts[1], parts[2])
            if value is None:
                return kind, key, None
            doc = json.loads(value)
            address = IPAddress(doc["address"], 4)
            meta = EndpointMeta.from_json(doc["meta"])
            return kind, key, Allocation(parts[1], parts[2], address, meta)
        name = parts[1]
        if value is None:
            return kind, name, None
        if kind == "net":
            return kind, name, _load_record(value)
        if kind == "host":
            return kind, name, Host(name, IPAddress(json.loads(value)["address"]))
        return kind, name, load_group(name, value)

    async def hosts(self) -> list[Host]:
        async def query(etcd: aetcd.Client) -> list[Host]:
            found = await self._prefix(etcd, "host", "")
            return sorted((self._record_of(kv) for kv in found), key=lambda h: h.id)

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
            "aux": {k: str(v) for k, v in r.aux.items()},
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
        {k: IPAddress(v) for k, v in (d.get("aux") or {}).items()},
    )


def _addr_of(key: bytes) -> int:
    return int(key.rsplit(b"/", 1)[1])


def _revision_of(response: Any) -> int:
    """The revision a transaction's first write made (each write's answer says it)."""
    kind = response.WhichOneof("response")
    return int(getattr(response, kind).header.revision)
