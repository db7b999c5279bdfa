"""The multi-host control plane without a datapath: which remote endpoints each network
is programmed with, on the real SQLite store, against a driver that records its calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from netaddr import IPAddress

from plugstrip.netdrivers.control.mesh import Mesh
from plugstrip.netdrivers.control.service import NetworkService
from plugstrip.netdrivers.datapath.testkit import RecordingDriver
from plugstrip.netdrivers.domain.contract import RemoteEndpoint
from plugstrip.netdrivers.stores.sqlite import SqliteStore
from plugstrip.netdrivers.stores.store import NO_META, EndpointMeta, Host, NetworkSpec

DRIVER = "plugstrip/weave"


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[NetworkService, RecordingDriver, Mesh]]:
    store = SqliteStore(tmp_path / "state.db")
    driver = RecordingDriver(DRIVER)
    changes = asyncio.Event()
    service = NetworkService(store, {DRIVER: driver}, host="me", on_change=changes.set)
    mesh = Mesh(service, IPAddress("192.168.5.1"), changes)
    await service.start()  # its view of the store, which the mesh reads
    yield service, driver, mesh
    await service.close()


async def test_each_network_gets_exactly_the_live_hosts_endpoints(
    setup: tuple[NetworkService, RecordingDriver, Mesh],
) -> None:
    service, driver, mesh = setup
    store = service.store
    wide = await service.create_network(NetworkSpec("wide", DRIVER))
    alone = await service.create_network(NetworkSpec("alone", DRIVER))
    await service.attach(wide, "holder-local", "/proc/1/ns/net")
    await service.attach(alone, "holder-local", "/proc/1/ns/net")
    await store.register_host(Host("live", IPAddress("192.168.5.2")), ttl=30)
    remote = await store.allocate(wide.id, "holder-live", meta=EndpointMeta(host="live"))
    await store.allocate(wide.id, "holder-dead", meta=EndpointMeta(host="dead"))  # no lease: gone
    await mesh.sync()
    assert driver.remotes_of("wide") == [
        [
            RemoteEndpoint(
                remote,
                "02:42:" + ":".join(f"{b:02x}" for b in remote.packed),
                IPAddress("192.168.5.2"),
            )
        ]
    ]
    assert driver.remotes_of("alone") == [[]]  # no other host on it: no tunnels

    await mesh.sync()  # nothing changed: nothing programmed again
    assert len(driver.remotes_of("wide")) == 1
    await mesh.sync(full=True)  # except on a full pass, which heals drift
    assert len(driver.remotes_of("wide")) == 2

    await store.release(wide.id, "holder-live")  # the remote endpoint goes
    await mesh.sync()
    assert driver.reached("wide") == set()
    # programmed as what changed (its entry and its host's tunnel), not the whole set again
    (change,) = driver.changes_of("wide")
    assert [r.address for r in change.removed] == [remote]
    assert change.hosts_removed == (IPAddress("192.168.5.2"),)
    assert not change.added and not change.hosts_added
    assert len(driver.remotes_of("wide")) == 2

    await store.allocate(wide.id, "holder-new", meta=EndpointMeta(host="live"))  # and one comes
    await mesh.sync()
    added = driver.changes_of("wide")[-1]
    assert len(added.added) == 1 and added.hosts_added == (IPAddress("192.168.5.2"),)
    await store.deregister_host("live")  # its host leaves: its endpoints go with it
    await mesh.sync()
    assert driver.reached("wide") == set()
    assert driver.changes_of("wide")[-1].hosts_removed == (IPAddress("192.168.5.2"),)


async def test_a_network_deleted_on_another_host_is_taken_down_here(
    setup: tuple[NetworkService, RecordingDriver, Mesh],
) -> None:
    service, driver, mesh = setup
    net = await service.create_network(NetworkSpec("gone", DRIVER))
    await service.store.delete_network(net.id)  # as another host's `network rm` does
    await mesh.sync()
    assert ("delete", "gone", None) in driver.calls
    assert service.set_up_here() == []


async def test_a_network_made_elsewhere_is_kept_while_the_view_catches_up(
    setup: tuple[NetworkService, RecordingDriver, Mesh],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another host makes a network and a container here joins it before this host's view
    has it (the join reads the network from the store): a sync meanwhile must not take
    the network down as deleted. It did, under load, and the container's network had no
    datapath here."""
    service, driver, mesh = setup
    elsewhere = SqliteStore(tmp_path / "state.db")  # another host's writes
    record = await elsewhere.create_network(
        NetworkSpec("made-elsewhere", DRIVER), service.pool, service.prefix, service.pool6
    )
    await service.view.close()  # the view lags for as long as the test needs
    assert record.id not in service.view.networks
    allocate = service.store.allocate

    async def sync_then_allocate(*args: Any, **kwargs: Any) -> IPAddress:
        await mesh.sync()  # the mesh's turn comes between set-up and allocation
        return await allocate(*args, **kwargs)

    monkeypatch.setattr(service.store, "allocate", sync_then_allocate)
    await service.attach(record, "holder-here", None)
    assert ("create", "made-elsewhere", None) in driver.calls
    assert ("delete", "made-elsewhere", None) not in driver.calls
    assert service.set_up_here() == [record]
    await elsewhere.close()


async def test_a_reused_vni_replaces_the_stale_network_first(
    setup: tuple[NetworkService, RecordingDriver, Mesh],
) -> None:
    """Deleted elsewhere and its VNI given to a new network before this host's next sync:
    the old network's devices (named by VNI) go before the new one's are made, and the
    sync after does not take the new one down."""
    service, driver, mesh = setup
    old = await service.create_network(NetworkSpec("old", DRIVER))
    await service.store.delete_network(old.id)
    new = await service.create_network(NetworkSpec("new", DRIVER))
    assert new.vni == old.vni
    assert driver.calls[-2:] == [("delete", "old", None), ("create", "new", None)]
    await mesh.sync()
    assert service.set_up_here() == [new]
    assert ("delete", "new", None) not in driver.calls


async def test_only_this_hosts_endpoints_are_its_own(
    setup: tuple[NetworkService, RecordingDriver, Mesh],
) -> None:
    service, _, _ = setup
    net = await service.create_network(NetworkSpec("shared", DRIVER))
    await service.attach(net, "mine", "/proc/1/ns/net")
    await service.store.allocate(net.id, "theirs", meta=EndpointMeta(host="other"))
    await service.store.allocate(net.id, "older", meta=NO_META)  # before hosts were recorded
    assert await service.owners() == {"mine", "older"}  # reconciliation leaves "theirs"
