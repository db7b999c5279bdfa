"""Hosts' control planes on one real etcd, with drivers that record: a host whose link to
etcd is cut while others change things (and etcd compacts the history it missed)
converges to the store's state when the link is back, without a restart; at rest no host
reads anything."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import suppress

import pytest
from netaddr import IPAddress

from plugstrip.netdrivers.control.mesh import Mesh
from plugstrip.netdrivers.control.service import NetworkService
from plugstrip.netdrivers.datapath.testkit import RecordingDriver
from plugstrip.netdrivers.stores.etcd import EtcdStore
from plugstrip.netdrivers.stores.store import NetworkRecord, NetworkSpec
from tests.etcd import EtcdServer

pytestmark = pytest.mark.system
DRIVER = "plugstrip/weave"


class Link:
    """A TCP relay from a loopback port to etcd that can be cut (every connection dropped,
    new ones refused) and mended: a host's network to etcd."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.cut = False
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()

    def sever(self) -> None:
        self.cut = True
        for writer in self._pipes:
            writer.transport.abort()
        self._pipes.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._pipes |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class Host:
    def __init__(self, name: str, index: int, url: str, prefix: str) -> None:
        self.driver = RecordingDriver(DRIVER)
        changes = asyncio.Event()
        self.store = EtcdStore.from_url(url, prefix)
        self.service = NetworkService(
            self.store, {DRIVER: self.driver}, host=name, on_change=changes.set
        )
        self.address = IPAddress(f"192.168.77.{index}")
        self.mesh = Mesh(self.service, self.address, changes)

    async def start(self) -> None:
        await self.service.start()
        self.mesh.start()

    async def close(self) -> None:
        await self.mesh.close()
        await self.service.close()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def link(etcd: EtcdServer) -> AsyncIterator[Link]:
    relay = Link(etcd.client)
    await relay.start()
    yield relay
    await relay.close()


async def _until(check: Callable[[], bool], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 (a recording driver has no event to wait on)
            await asyncio.sleep(0.05)


async def test_cut_off_while_others_change_and_etcd_compacts(etcd: EtcdServer, link: Link) -> None:
    prefix = f"/test-{uuid.uuid4().hex}/"
    a = Host("a", 1, etcd.url, prefix)
    b = Host("b", 2, f"etcd://127.0.0.1:{link.port}", prefix)  # b's etcd is behind the link
    await a.start()
    await b.start()
    try:
        net: NetworkRecord = await a.service.create_network(NetworkSpec("n", DRIVER))
        await b.service.attach(net, "b-1", None)  # b has an endpoint on it: it is set up there
        kept = await a.service.attach(net, "a-kept", None)
        gone = await a.service.attach(net, "a-gone", None)
        await _until(
            lambda: {r.address for r in b.driver.reached("n")} == {kept.address, gone.address}, 10
        )

        link.sever()
        steps: list[bool] = []  # whether each step b's view takes from here is a whole read
        b.service.view.listen(lambda delta: steps.append(delta.whole))
        await a.service.detach(net, "a-gone")
        new = await a.service.attach(net, "a-new", None)
        client = await a.store._etcd()
        await client.compact(a.store.last_written)  # b's revision is history now
        await asyncio.sleep(2)  # b tries (and fails) to follow meanwhile
        assert {r.address for r in b.driver.reached("n")} == {kept.address, gone.address}

        link.cut = False  # mended: b reads the whole again and converges, no restart
        await _until(
            lambda: {r.address for r in b.driver.reached("n")} == {kept.address, new.address}, 20
        )
        assert all(r.host == a.address for r in b.driver.reached("n"))
        assert steps[0], "the history b missed was compacted: it read the whole again"
    finally:
        await b.close()
        await a.close()


async def test_nothing_is_read_at_rest(etcd: EtcdServer) -> None:
    """Hosts up, nothing changing: etcd serves no reads (only the lease keep-alives)."""
    prefix = f"/test-{uuid.uuid4().hex}/"
    hosts = [Host(f"h{i}", i, etcd.url, prefix) for i in range(1, 4)]
    for host in hosts:
        await host.start()
    try:
        net = await hosts[0].service.create_network(NetworkSpec("rest", DRIVER))
        for host in hosts:
            await host.service.attach(net, f"{host.service.host}-1", None)
        await asyncio.sleep(1)
        before, _ = etcd.served()
        await asyncio.sleep(5)
        assert etcd.served()[0] == before
        assert {len(h.driver.reached("rest")) for h in hosts} == {2}
    finally:
        for host in hosts:
            await host.close()
