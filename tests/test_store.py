"""The store contract, run on both stores: SQLite on a real database file and etcd on a
real etcd server. Transactions, idempotence, concurrency (two store objects, as two
plugstrip processes or two hosts), persistence across a restart, reclaiming."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers.control.view import Delta, StoreView
from plugstrip.netdrivers.domain.errors import Conflict, Exhausted, Invalid, NetworkError, NotFound
from plugstrip.netdrivers.domain.security import Group
from plugstrip.netdrivers.stores import etcd as etcd_store
from plugstrip.netdrivers.stores.etcd import EtcdStore
from plugstrip.netdrivers.stores.sqlite import SqliteStore
from plugstrip.netdrivers.stores.store import (
    Allocation,
    EndpointMeta,
    Host,
    NetworkSpec,
    Store,
    StoreChange,
    StoreState,
)
from tests.etcd import etcd_server

Opener = Callable[[], Store]


@pytest.fixture(scope="session")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_server(tmp_path_factory.mktemp("etcd")) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.system)])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Opens a store on one backing: each call a new store object (a new process)."""
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "s.db")
    url = request.getfixturevalue("etcd_url")
    prefix = f"/test-{uuid.uuid4().hex}/"  # each test its own key space
    return lambda: EtcdStore.from_url(url, prefix)


@pytest.fixture
async def store(opener: Opener) -> AsyncIterator[Store]:
    s = opener()
    yield s
    await s.close()


async def test_networks_get_subnets_and_vnis_in_order(store: Store) -> None:
    a = await store.create_network(NetworkSpec("front", "plugstrip/weave"))
    b = await store.create_network(NetworkSpec("back", "plugstrip/ovs", labels={"x": "y"}))
    c = await store.create_network(
        NetworkSpec("mine", "plugstrip/weave", IPNetwork("10.40.1.0/24"), IPAddress("10.40.1.254"))
    )
    assert (a.subnet, a.gateway, a.vni) == (IPNetwork("10.32.0.0/24"), IPAddress("10.32.0.1"), 1)
    assert (b.subnet, b.vni, b.labels) == (IPNetwork("10.32.1.0/24"), 2, {"x": "y"})
    assert (c.gateway, c.vni) == (IPAddress("10.40.1.254"), 3)
    assert [n.name for n in await store.list_networks()] == ["back", "front", "mine"]
    assert await store.get_network("front") == a
    assert await store.get_network(a.id) == a
    assert await store.get_network(a.id[:12]) == a


@pytest.mark.parametrize(
    ("spec", "category", "message"),
    [
        (NetworkSpec("front", "d"), Conflict, "already exists"),
        (NetworkSpec("n2", "d", IPNetwork("10.32.0.128/25")), Conflict, "overlaps 10.32.0.0/24"),
        (
            NetworkSpec("n3", "d", IPNetwork("10.50.0.0/24"), IPAddress("10.50.1.1")),
            Invalid,
            "not a host address",
        ),
    ],
)
async def test_bad_networks_are_refused_and_leave_nothing(
    store: Store, spec: NetworkSpec, category: type[NetworkError], message: str
) -> None:
    await store.create_network(NetworkSpec("front", "d"))
    with pytest.raises(NetworkError) as info:
        await store.create_network(spec)
    assert isinstance(info.value, category) and message in str(info.value)
    assert [n.name for n in await store.list_networks()] == ["front"]


async def test_allocation_is_idempotent_per_owner(store: Store) -> None:
    net = await store.create_network(NetworkSpec("n", "d"))
    first = await store.allocate(net.id, "c1")
    assert first == IPAddress("10.32.0.2")
    assert await store.allocate(net.id, "c1") == first
    assert await store.allocate(net.id, "c2", IPAddress("10.32.0.10")) == IPAddress("10.32.0.10")
    with pytest.raises(NetworkError) as info:
        await store.allocate(net.id, "c3", IPAddress("10.32.0.10"))
    assert isinstance(info.value, Conflict)
    assert await store.allocations(net.id) == {"c1": first, "c2": IPAddress("10.32.0.10")}


async def test_update_meta_changes_every_endpoint_of_one_owner(opener: Opener) -> None:
    store = opener()
    try:
        a = await store.create_network(NetworkSpec("a", "d"))
        b = await store.create_network(NetworkSpec("b", "d"))
        meta = EndpointMeta(host="h1", ifname="ethps0", aliases=("web",))
        await store.allocate(a.id, "holder", meta=meta)
        await store.allocate(b.id, "holder", meta=replace(meta, ifname="ethps1"))
        await store.allocate(a.id, "other", meta=meta)
        await store.update_meta("holder", lambda m: replace(m, container="c1", name="x"))
    finally:
        await store.close()
    reopened = opener()  # what was written, not what one object remembers
    try:
        metas = {(e.network_id, e.owner): e.meta for e in await reopened.endpoints()}
    finally:
        await reopened.close()
    named = replace(meta, container="c1", name="x")
    assert metas == {
        (a.id, "holder"): named,
        (b.id, "holder"): replace(named, ifname="ethps1"),
        (a.id, "other"): meta,
    }


async def test_a_store_migrates_endpoints_of_an_older_shape(tmp_path: Path) -> None:
    """Rows as earlier versions wrote them (nulls, empty lists) are rewritten in the shape
    this one writes when it opens; keys of a newer version are kept."""
    import sqlite3

    store = SqliteStore(tmp_path / "s.db")
    net = await store.create_network(NetworkSpec("n", "d"))
    await store.allocate(net.id, "c1")
    await store.close()
    old = '{"ifname": "ethps0", "aliases": [], "requested": null, "name": "web", "vlan": 7}'
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("UPDATE allocations SET meta=?", (old,))
    db.commit()
    db.close()
    store = SqliteStore(tmp_path / "s.db")
    try:
        [endpoint] = await store.endpoints()
        assert endpoint.meta == EndpointMeta(ifname="ethps0", name="web")
    finally:
        await store.close()
    db = sqlite3.connect(tmp_path / "s.db")
    [(text,)] = db.execute("SELECT meta FROM allocations").fetchall()
    db.close()
    assert json.loads(text) == {"ifname": "ethps0", "name": "web", "vlan": 7}


async def test_concurrent_allocations_from_two_stores_never_collide(opener: Opener) -> None:
    """Two store objects (like two plugstrip processes, or two hosts) on one backing."""
    a, b = opener(), opener()
    try:
        net = await a.create_network(NetworkSpec("n", "d"))
        got = await asyncio.gather(
            *((a if i % 2 else b).allocate(net.id, f"c{i}") for i in range(100))
        )
        assert len(set(got)) == 100
        await asyncio.gather(*(a.release(net.id, f"c{i}") for i in range(100)))
        assert await b.allocations(net.id) == {}
    finally:
        await a.close()
        await b.close()


async def test_state_survives_a_restart_and_subnets_are_reclaimed(opener: Opener) -> None:
    s1 = opener()
    net = await s1.create_network(NetworkSpec("n", "d"))
    ip = await s1.allocate(net.id, "c1")
    await s1.close()
    s2 = opener()
    try:
        assert await s2.allocate(net.id, "c1") == ip  # same address after a restart
        with pytest.raises(NetworkError) as info:
            await s2.delete_network(net.id)  # still in use, as Docker refuses it
        assert isinstance(info.value, Conflict)
        await s2.release(net.id, "c1")
        await s2.delete_network(net.id)
        again = await s2.create_network(NetworkSpec("n2", "d"))
        assert (again.subnet, again.vni) == (net.subnet, net.vni)  # reclaimed
    finally:
        await s2.close()


async def test_dual_stack_networks_pair_their_subnets(opener: Opener) -> None:
    """An IPv6 subnet asked for or cut out of the pool, kept across a restart; overlaps
    refused in IPv6 as in IPv4."""
    s1 = opener()
    given = await s1.create_network(
        NetworkSpec(
            "given", "d", IPNetwork("10.70.0.0/24"), ipv6=True, subnet6=IPNetwork("fd70::/64")
        )
    )
    pooled = await s1.create_network(NetworkSpec("pooled", "d", ipv6=True))
    plain = await s1.create_network(NetworkSpec("plain", "d"))
    assert (given.subnet6, given.gateway6) == (IPNetwork("fd70::/64"), IPAddress("fd70::1"))
    assert pooled.subnet6 == IPNetwork("fd70:6c75:6773::/64")  # the pool's first /64
    assert plain.subnet6 is None and plain.gateway6 is None
    second = await s1.create_network(NetworkSpec("second", "d", ipv6=True))
    assert second.subnet6 == IPNetwork("fd70:6c75:6773:1::/64")
    address = await s1.allocate(given.id, "c1")
    assert given.address6(address) == IPAddress("fd70::2")
    with pytest.raises(NetworkError) as info:
        await s1.create_network(
            NetworkSpec("clash", "d", ipv6=True, subnet6=IPNetwork("fd70::/63"))
        )
    assert isinstance(info.value, Conflict) and "overlaps fd70::/64" in str(info.value)
    await s1.close()
    s2 = opener()
    try:
        assert await s2.get_network("given") == given
        assert {n.name: n.subnet6 for n in await s2.list_networks()}["pooled"] == pooled.subnet6
    finally:
        await s2.close()


async def test_a_store_made_before_dual_stack_opens(tmp_path: Path) -> None:
    """A SQLite store file of the schema before IPv6 gets its column, its networks kept."""
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE networks (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, driver TEXT NOT NULL,
        subnet TEXT NOT NULL, gateway TEXT NOT NULL, vni INTEGER NOT NULL UNIQUE,
        options TEXT NOT NULL, labels TEXT NOT NULL, internal INTEGER NOT NULL,
        created REAL NOT NULL, last_address INTEGER);
        INSERT INTO networks VALUES
        ('abc', 'old', 'plugstrip/weave', '10.32.0.0/24', '10.32.0.1', 1, '{}', '{}', 0, 1.0, NULL);
        """
    )
    db.close()
    store = SqliteStore(path)
    try:
        old = await store.get_network("old")
        assert (old.subnet, old.subnet6) == (IPNetwork("10.32.0.0/24"), None)
        new = await store.create_network(NetworkSpec("new", "d", ipv6=True))
        assert new.subnet6 is not None and new.subnet == IPNetwork("10.32.1.0/24")
    finally:
        await store.close()


async def test_unknown_network(store: Store) -> None:
    for call in (store.get_network("nope"), store.allocate("nope", "c1")):
        with pytest.raises(NetworkError) as info:
            await call
        assert isinstance(info.value, NotFound)


async def test_next_fit_skips_addresses_taken_anywhere(store: Store) -> None:
    net = await store.create_network(NetworkSpec("n", "d", IPNetwork("10.44.0.0/22")))
    far = IPAddress("10.44.3.200")  # beyond the first window an allocation reads
    assert await store.allocate(net.id, "asked", far) == far
    await store.allocate(net.id, "a1")
    await store.release(net.id, "a1")  # next-fit: not handed out again at once
    got = [await store.allocate(net.id, f"c{i}") for i in range(5)]
    assert IPAddress("10.44.0.2") not in got and far not in got
    assert got == [IPAddress(f"10.44.0.{i}") for i in range(3, 8)]
    await store.release(net.id, "asked")
    assert await store.allocate(net.id, "again", far) == far


async def test_hosts_live_under_a_lease(opener: Opener) -> None:
    a, b = opener(), opener()  # two hosts
    try:
        host_a = Host("a" * 32, IPAddress("192.168.90.1"))
        host_b = Host("b" * 32, IPAddress("192.168.90.2"))
        await a.register_host(host_a, ttl=2)
        await b.register_host(host_b, ttl=30)
        await a.register_host(host_a, ttl=2)  # a heartbeat: idempotent
        assert await b.hosts() == [host_a, host_b]
        await b.deregister_host(host_b.id)  # leaving cleanly: gone at once
        assert await a.hosts() == [host_a]
        await asyncio.sleep(4)  # no heartbeat within the TTL: gone
        assert await b.hosts() == []
        await a.register_host(host_a, ttl=2)  # back after its lease ran out: listed again
        assert await b.hosts() == [host_a]
    finally:
        await a.close()
        await b.close()


async def _until(view: StoreView, check: Callable[[], bool]) -> None:
    changed = asyncio.Event()
    view.listen(lambda _: changed.set())
    async with asyncio.timeout(5):
        while not check():
            await changed.wait()
            changed.clear()


async def test_a_view_follows_another_writers_changes(opener: Opener) -> None:
    """What another host (another store object) writes reaches a follower's view, with no
    read of the whole after the first: networks, endpoints, hosts and groups, both ways."""
    follower, writer = opener(), opener()
    view = StoreView(follower)
    seen: list[Delta] = []
    view.listen(seen.append)
    view.start()
    try:
        await asyncio.wait_for(view.ready.wait(), 5)
        net = await writer.create_network(NetworkSpec("f", "plugstrip/weave"))
        address = await writer.allocate(net.id, "c1", meta=EndpointMeta(host="h2"))
        await writer.register_host(Host("h2", IPAddress("192.168.90.2")), ttl=30)
        await writer.change_group("web", lambda _: Group("web"))
        await _until(view, lambda: "web" in view.groups)
        assert view.networks == {net.id: net}
        assert view.attachments_of("c1") == [
            Allocation(net.id, "c1", address, EndpointMeta(host="h2"))
        ]
        assert view.on_host == {"h2": {(net.id, "c1")}}
        assert view.hosts == {"h2": Host("h2", IPAddress("192.168.90.2"))}

        await writer.release(net.id, "c1")
        await writer.deregister_host("h2")
        await writer.delete_network(net.id)
        await _until(view, lambda: not view.networks)
        assert (view.endpoints, view.owners, view.on_host, view.hosts) == ({}, {}, {}, {})
        if isinstance(follower, EtcdStore):  # one change at a time, each said as such
            assert [d.whole for d in seen] == [True] + [False] * (len(seen) - 1)
            assert any(d.endpoints == {(net.id, "c1")} for d in seen)
    finally:
        await view.close()
        await follower.close()
        await writer.close()


async def test_a_view_has_what_its_own_store_wrote(opener: Opener) -> None:
    """Read-your-writes: once ``reached(last_written)`` returns, the write is in the view."""
    store = opener()
    view = StoreView(store)
    view.start()
    try:
        await asyncio.wait_for(view.ready.wait(), 5)
        net = await store.create_network(NetworkSpec("mine", "plugstrip/weave"))
        for i in range(20):
            await store.allocate(net.id, f"o{i}")
            await view.reached(store.last_written)
            assert f"o{i}" in view.endpoints[net.id]
    finally:
        await view.close()
        await store.close()


async def test_etcd_follow_resumes_where_it_was_and_rereads_after_a_compaction(
    etcd_url: str,
) -> None:
    """After a lost watch, the changes since the revision reached, without the whole; if
    etcd compacted past it, the whole again (then changes)."""
    prefix = f"/test-{uuid.uuid4().hex}/"
    store = EtcdStore.from_url(etcd_url, prefix)
    try:
        net = await store.create_network(NetworkSpec("r", "plugstrip/weave"))
        since = store.last_written
        await store.allocate(net.id, "after")
        steps = store.follow(since)
        step = await asyncio.wait_for(anext(steps), 5)
        assert isinstance(step, StoreChange) and step.key == (net.id, "after")
        await steps.aclose()

        await store.allocate(net.id, "missed")
        client = await store._etcd()
        await client.compact(store.last_written)
        steps = store.follow(since)
        step = await asyncio.wait_for(anext(steps), 5)
        assert isinstance(step, StoreState)
        assert {a.owner for a in step.endpoints} == {"after", "missed"}
        await store.allocate(net.id, "later")
        step = await asyncio.wait_for(anext(steps), 5)
        assert isinstance(step, StoreChange) and step.key == (net.id, "later")
        await steps.aclose()
    finally:
        await store.close()


async def test_etcd_whole_state_is_read_in_pages(
    etcd_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC refuses answers over 4 MB (20,000 endpoints are more): the whole is read a page
    at a time, at one revision."""
    monkeypatch.setattr(etcd_store, "PAGE", 7)
    prefix = f"/test-{uuid.uuid4().hex}/"
    store = EtcdStore.from_url(etcd_url, prefix)
    try:
        net = await store.create_network(NetworkSpec("p", "plugstrip/weave"))
        for i in range(30):
            await store.allocate(net.id, f"o{i}")
        step = await asyncio.wait_for(anext(store.follow()), 5)
        assert isinstance(step, StoreState)
        assert len(step.endpoints) == 30 and step.networks == [net]
        assert step.revision == store.last_written
        assert len(await store.endpoints()) == 30  # the plain reads page too
    finally:
        await store.close()


async def test_aux_addresses_are_never_handed_out(opener: Opener) -> None:
    """Docker's --aux-address: reserved in both families (an IPv6 one by its host number),
    neither chosen nor given when asked for, and kept across a restart; one outside the
    subnets or on the gateway refused."""
    s1 = opener()
    aux = {"v4": IPAddress("10.71.0.3"), "v6": IPAddress("fd71::5")}
    spec = NetworkSpec(
        "vips", "d", IPNetwork("10.71.0.0/29"), ipv6=True, subnet6=IPNetwork("fd71::/64"), aux=aux
    )
    net = await s1.create_network(spec)
    handed = [await s1.allocate(net.id, f"c{i}") for i in range(3)]  # .2 .4 .6: all left
    assert handed == [IPAddress(f"10.71.0.{n}") for n in (2, 4, 6)]
    with pytest.raises(NetworkError) as info:
        await s1.allocate(net.id, "c9")
    assert isinstance(info.value, Exhausted)
    for reserved in ("10.71.0.3", "10.71.0.5"):
        with pytest.raises(NetworkError) as info:
            await s1.allocate(net.id, "c10", IPAddress(reserved))
        assert isinstance(info.value, Conflict) and "reserved" in str(info.value)
    await s1.close()
    s2 = opener()
    try:
        assert (await s2.get_network("vips")).aux == aux
        bad = {
            "10.72.0.9": "not in the network's subnets",
            "10.74.0.1": "is the gateway",
            "fd74::1": "is the gateway",
            "fd74::1:0": "beyond IPv4 subnet",
        }
        for address, message in bad.items():
            wrong = NetworkSpec(
                "bad",
                "d",
                IPNetwork("10.74.0.0/29"),
                ipv6=True,
                subnet6=IPNetwork("fd74::/64"),
                aux={"x": IPAddress(address)},
            )
            with pytest.raises(NetworkError) as info:
                await s2.create_network(wrong)
            assert isinstance(info.value, Invalid) and message in str(info.value), address
    finally:
        await s2.close()
