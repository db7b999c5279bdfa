"""The embedded store: SQLite in the state directory, for one host."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers.domain import ipam
from plugstrip.netdrivers.domain.errors import Conflict, NotFound
from plugstrip.netdrivers.domain.security import Group
from plugstrip.netdrivers.stores.store import (
    NO_META,
    Allocation,
    EndpointMeta,
    GroupChange,
    Host,
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
CHANGE_POLL = 0.25  # seconds between looks at whether another connection wrote

_SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, driver TEXT NOT NULL,
    subnet TEXT NOT NULL, gateway TEXT NOT NULL, vni INTEGER NOT NULL UNIQUE,
    options TEXT NOT NULL, labels TEXT NOT NULL, internal INTEGER NOT NULL,
    created REAL NOT NULL, last_address INTEGER, subnet6 TEXT, aux TEXT
);
CREATE TABLE IF NOT EXISTS allocations (
    network_id TEXT NOT NULL REFERENCES networks(id), owner TEXT NOT NULL,
    address INTEGER NOT NULL, meta TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (network_id, owner), UNIQUE (network_id, address)
);
CREATE TABLE IF NOT EXISTS security_groups (name TEXT PRIMARY KEY, rules TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (
    id TEXT PRIMARY KEY, address TEXT NOT NULL, expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revision (n INTEGER NOT NULL);
INSERT INTO revision SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM revision);
"""


class SqliteStore:
    """SQLite in WAL mode; each call is one ``BEGIN IMMEDIATE`` transaction in a thread,
    so concurrent callers (in this process or another) serialise on the write lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []  # one per worker thread, closed by close()
        self._running: set[asyncio.Future[Any]] = set()  # work in threads, awaited by close()
        self.last_written = 0
        self._wrote = asyncio.Event()  # wakes this object's followers at once
        db = self._connect()
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(networks)")}
        if "subnet6" not in columns:  # a store made before dual-stack networks
            db.execute("ALTER TABLE networks ADD COLUMN subnet6 TEXT")
        if "aux" not in columns:  # a store made before aux addresses
            db.execute("ALTER TABLE networks ADD COLUMN aux TEXT")
        _migrate_meta(db)

    def _connect(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA foreign_keys=ON")
            # WAL + NORMAL: a commit survives plugstrip crashing; a power cut may lose the
            # last ones, and the containers they were for with it (reconciliation mends).
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            self._all.append(db)
        return db

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """``fn`` in a worker thread, which close() waits for: a caller cancelled (a
        follower closed) leaves its thread running, and closing a connection under a
        running statement crashes sqlite."""
        running = asyncio.ensure_future(asyncio.to_thread(fn))
        self._running.add(running)
        running.add_done_callback(self._running.discard)
        return await asyncio.shield(running)

    async def close(self) -> None:
        await asyncio.gather(*self._running, return_exceptions=True)
        for db in self._all:
            db.close()
        self._all.clear()
        self._local = threading.local()

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> tuple[T, int | None]:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                result = fn(db)
                revision = None
                if db.total_changes != before:  # a write: the store's revision moves on
                    db.execute("UPDATE revision SET n = n + 1")
                    revision = db.execute("SELECT n FROM revision").fetchone()[0]
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result, revision

        result, revision = await self._in_thread(run)
        if revision is not None:
            self.last_written = max(self.last_written, revision)
            self._wrote.set()
        return result

    async def create_network(
        self,
        spec: NetworkSpec,
        pool: IPNetwork = ipam.DEFAULT_RANGE,
        prefix: int = ipam.DEFAULT_PREFIX,
        pool6: IPNetwork = ipam.DEFAULT_RANGE6,
    ) -> NetworkRecord:
        def create(db: sqlite3.Connection) -> NetworkRecord:
            if db.execute("SELECT 1 FROM networks WHERE name=?", (spec.name,)).fetchone():
                raise Conflict(f"network with name {spec.name} already exists")
            records = [_record(r) for r in db.execute("SELECT * FROM networks")]
            subnet, gateway, subnet6 = decide_subnets(spec, records, pool, prefix, pool6)
            record = NetworkRecord(
                uuid.uuid4().hex + uuid.uuid4().hex,
                spec.name,
                spec.driver,
                subnet,
                gateway,
                lowest_free_vni({r.vni for r in records}),
                dict(spec.options),
                dict(spec.labels),
                spec.internal,
                time.time(),
                subnet6,
                dict(spec.aux),
            )
            db.execute(
                "INSERT INTO networks VALUES (?,?,?,?,?,?,?,?,?,?,NULL,?,?)",
                (
                    record.id,
                    record.name,
                    record.driver,
                    str(subnet),
                    str(gateway),
                    record.vni,
                    json.dumps(record.options),
                    json.dumps(record.labels),
                    int(record.internal),
                    record.created,
                    str(subnet6) if subnet6 is not None else None,
                    json.dumps({k: str(v) for k, v in record.aux.items()}),
                ),
            )
            return record

        return await self._tx(create)

    async def get_network(self, name_or_id: str) -> NetworkRecord:
        def get(db: sqlite3.Connection) -> NetworkRecord:
            row = db.execute(
                "SELECT * FROM networks WHERE id=? OR name=?", (name_or_id, name_or_id)
            ).fetchone()
            if row is None:
                prefix = db.execute(  # an id prefix, as Docker accepts (no LIKE wildcards)
                    "SELECT * FROM networks WHERE substr(id, 1, length(?1)) = ?1", (name_or_id,)
                ).fetchall()
                if len(prefix) != 1 or not name_or_id:
                    raise NotFound(f"network {name_or_id} not found")
                row = prefix[0]
            return _record(row)

        return await self._tx(get)

    async def list_networks(self) -> list[NetworkRecord]:
        return await self._tx(_networks)

    async def delete_network(self, network_id: str) -> None:
        def delete(db: sqlite3.Connection) -> None:
            users = db.execute(
                "SELECT count(*) FROM allocations WHERE network_id=?", (network_id,)
            ).fetchone()[0]
            if users:
                raise Conflict(f"network {network_id} has {users} active endpoints")
            db.execute("DELETE FROM networks WHERE id=?", (network_id,))

        await self._tx(delete)

    async def allocate(
        self,
        network_id: str,
        owner: str,
        requested: IPAddress | None = None,
        meta: EndpointMeta = NO_META,
    ) -> IPAddress:
        def alloc(db: sqlite3.Connection) -> IPAddress:
            net = db.execute("SELECT * FROM networks WHERE id=?", (network_id,)).fetchone()
            if net is None:
                raise NotFound(f"network {network_id} not found")
            record = _record(net)
            held = db.execute(
                "SELECT address FROM allocations WHERE network_id=? AND owner=?",
                (network_id, owner),
            ).fetchone()
            if held is not None:  # idempotent per (owner, network)
                mine = IPAddress(held[0], 4)
                if requested is not None and requested != mine:
                    raise Conflict(f"{owner} already has {mine} on this network")
                return mine
            address = ipam.choose_address(
                record.subnet,
                record.gateway,
                lambda value: (
                    db.execute(  # an index lookup
                        "SELECT 1 FROM allocations WHERE network_id=? AND address=?",
                        (network_id, value),
                    ).fetchone()
                    is not None
                ),
                requested,
                after=net[10],
                reserved=record.reserved(),
            )
            if requested is None:
                db.execute(
                    "UPDATE networks SET last_address=? WHERE id=?", (int(address), network_id)
                )
            db.execute(
                "INSERT INTO allocations VALUES (?,?,?,?)",
                (network_id, owner, int(address), _meta_text(meta)),
            )
            return address

        return await self._tx(alloc)

    async def release(self, network_id: str, owner: str) -> None:
        await self._tx(
            lambda db: db.execute(
                "DELETE FROM allocations WHERE network_id=? AND owner=?", (network_id, owner)
            )
        )

    async def allocations(self, network_id: str) -> dict[str, IPAddress]:
        return await self._tx(
            lambda db: {
                o: IPAddress(a, 4)
                for o, a in db.execute(
                    "SELECT owner, address FROM allocations WHERE network_id=?", (network_id,)
                )
            }
        )

    async def endpoints(
        self, network_id: str | None = None, owner: str | None = None
    ) -> list[Allocation]:
        """Allocations, all or of one network and/or one owner."""
        return await self._tx(lambda db: _endpoints(db, network_id, owner))

    async def update_meta(self, owner: str, change: MetaChange) -> None:
        def update(db: sqlite3.Connection) -> None:
            rows = db.execute(
                "SELECT network_id, meta FROM allocations WHERE owner=?", (owner,)
            ).fetchall()
            for network_id, meta in rows:
                db.execute(
                    "UPDATE allocations SET meta=? WHERE network_id=? AND owner=?",
                    (_rewritten(meta, change), network_id, owner),
                )

        await self._tx(update)

    async def register_host(self, host: Host, ttl: int) -> None:
        await self._tx(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO hosts VALUES (?,?,?)",
                (host.id, str(host.address), time.time() + ttl),
            )
        )

    async def deregister_host(self, host_id: str) -> None:
        await self._tx(lambda db: db.execute("DELETE FROM hosts WHERE id=?", (host_id,)))

    async def groups(self) -> list[Group]:
        return await self._tx(_groups)

    async def change_group(self, name: str, change: GroupChange) -> Group | None:
        def write(db: sqlite3.Connection) -> Group | None:
            row = db.execute("SELECT rules FROM security_groups WHERE name=?", (name,)).fetchone()
            new = change(load_group(name, row[0]) if row else None)
            if new is None:
                db.execute("DELETE FROM security_groups WHERE name=?", (name,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO security_groups VALUES (?,?)", (name, dump_group(new))
                )
            return new

        return await self._tx(write)

    async def follow(self, since: int | None = None) -> AsyncIterator[StoreState | StoreChange]:
        """The state whole, and again whenever it changed: at once after this object's
        writes, within ``CHANGE_POLL`` after another connection's (the operator's
        ``plugstrip sg``, another plugstrip process; SQLite's data_version says that
        something changed, not what, so there are no single changes to give). Reading
        all of it is cheap here: one host's endpoints, on a local file."""
        db = await self._in_thread(self._watcher)

        def version() -> int:
            return int(db.execute("PRAGMA data_version").fetchone()[0])

        while True:
            self._wrote.clear()
            seen = await self._in_thread(version)  # before the read: no write falls between
            state = await self._tx(_read_state)
            if state.revision != since:  # what the caller has seen already is not news
                since = state.revision
                yield state
            while True:
                try:
                    # not wait_for: on 3.11 it can swallow a cancel that comes as the
                    # event is set, and the follower would poll for ever
                    async with asyncio.timeout(CHANGE_POLL):
                        await self._wrote.wait()
                    break
                except TimeoutError:
                    if await self._in_thread(version) != seen:
                        break

    async def keep_alive(self, host: Host, ttl: int) -> None:
        while True:
            await self.register_host(host, ttl)
            await asyncio.sleep(ttl / 3)

    def _watcher(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._all.append(db)
        return db

    async def hosts(self) -> list[Host]:
        return await self._tx(_hosts)


def _read_state(db: sqlite3.Connection) -> StoreState:
    revision = db.execute("SELECT n FROM revision").fetchone()[0]
    return StoreState(revision, _networks(db), _endpoints(db), _hosts(db), _groups(db))


def _networks(db: sqlite3.Connection) -> list[NetworkRecord]:
    return [_record(r) for r in db.execute("SELECT * FROM networks ORDER BY name")]


def _endpoints(
    db: sqlite3.Connection, network_id: str | None = None, owner: str | None = None
) -> list[Allocation]:
    rows = db.execute(
        "SELECT network_id, owner, address, meta FROM allocations"
        " WHERE (?1 IS NULL OR network_id=?1) AND (?2 IS NULL OR owner=?2)"
        " ORDER BY network_id, address",
        (network_id, owner),
    )
    return [Allocation(n, o, IPAddress(a, 4), _meta(m)) for n, o, a, m in rows]


def _migrate_meta(db: sqlite3.Connection) -> None:
    """Endpoints' meta in the shape this version writes (older ones kept nulls and empty
    lists), at open: a no-op once done."""
    db.execute("BEGIN IMMEDIATE")
    try:
        rows = db.execute("SELECT network_id, owner, meta FROM allocations").fetchall()
        for network_id, owner, text in rows:
            if (new := _rewritten(text, lambda meta: meta)) != text:
                db.execute(
                    "UPDATE allocations SET meta=? WHERE network_id=? AND owner=?",
                    (new, network_id, owner),
                )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _meta(text: str) -> EndpointMeta:
    return EndpointMeta.from_json(json.loads(text))


def _meta_text(meta: EndpointMeta) -> str:
    return json.dumps(meta.to_json())


def _rewritten(text: str, change: MetaChange) -> str:
    old = json.loads(text)
    return json.dumps(change(EndpointMeta.from_json(old)).to_json(old))


def _hosts(db: sqlite3.Connection) -> list[Host]:
    rows = db.execute("SELECT id, address FROM hosts WHERE expires > ? ORDER BY id", (time.time(),))
    return [Host(i, IPAddress(a)) for i, a in rows]


def _groups(db: sqlite3.Connection) -> list[Group]:
    rows = db.execute("SELECT name, rules FROM security_groups ORDER BY name")
    return [load_group(n, r) for n, r in rows]


def _record(row: tuple[str, ...]) -> NetworkRecord:
    return NetworkRecord(
        row[0],
        row[1],
        row[2],
        IPNetwork(row[3]),
        IPAddress(row[4]),
        int(row[5]),
        json.loads(row[6]),
        json.loads(row[7]),
        bool(row[8]),
        float(row[9]),
        IPNetwork(row[11]) if row[11] else None,
        {k: IPAddress(v) for k, v in json.loads(row[12] or "{}").items()},
    )
