"""The drivers on a real kernel, one script for both: a "host" namespace holds the
datapath (Linux bridges, or a real Open vSwitch on its userspace datapath), "containers"
are namespaces of their own. Reach within a network, isolation across, MTU, re-runs after
a crash, teardown; each driver's own state checked where it keeps it (iptables, OVSDB).
Then the weave driver across two hosts over kernel VXLAN."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers.datapath.netlink import ZERO_MAC, Netlink
from plugstrip.netdrivers.datapath.ovs import INTEGRATION_BRIDGE, OvsDriver, host_port_name
from plugstrip.netdrivers.datapath.ovsdb import Ovsdb
from plugstrip.netdrivers.datapath.weave import WeaveDriver, bridge_name, host_veth_name, vxlan_name
from plugstrip.netdrivers.domain.contract import Driver, Endpoint, Network, RemoteEndpoint
from tests import netns
from tests.ovs import ovs_in

pytestmark = pytest.mark.system  # namespaces, devices, daemons or installs of its own

Eps = dict[str, Endpoint]


@dataclass
class Rig:
    """One driver in a host namespace, and the checks of the state only it keeps."""

    driver: Driver
    red: Network
    blue: Network
    created: Callable[[], Awaitable[None]]  # after both networks are made (twice)
    joined: Callable[[Eps], Awaitable[None]]  # after r1, r2 (red) and b1 (blue) joined
    gone: Callable[[], Awaitable[None]]  # after every endpoint left and the networks went


@asynccontextmanager
async def weave(host: str, _: Path) -> AsyncIterator[Rig]:
    red = Network("n-red", "red", IPNetwork("10.97.1.0/24"), vni=101)
    blue = Network("n-blue", "blue", IPNetwork("10.97.2.0/24"), vni=102)
    # as dockerd leaves a host: bridged frames go through iptables, and FORWARD drops
    assert netns.run(host, "iptables", "-P", "FORWARD", "DROP").returncode == 0
    driver = WeaveDriver(netns=netns.path(host))

    async def created() -> None:
        pass

    async def joined(eps: Eps) -> None:
        rules = netns.run(host, "iptables", "-S", "FORWARD").stdout
        assert rules.count("-i psbr101 -o psbr101 -j ACCEPT") == 1  # once, despite two runs
        netns.run(
            host, "iptables", "-D", "FORWARD", "-i", "psbr101", "-o", "psbr101", "-j", "ACCEPT"
        )
        assert not netns.ping(r1_of(eps), eps["r2"].address)  # the control: dropped
        await driver.create_network(red)  # re-run setup puts it back
        assert netns.ping(r1_of(eps), eps["r2"].address)
        link = netns.run(r1_of(eps), "ip", "-o", "link", "show", "eth0").stdout
        assert "02:42:00:65:00:02" in link
        async with Netlink(netns.path(host)) as nl:
            assert await nl.link_attr(vxlan_name(red), "mtu") == 1450
            assert await nl.link_attr(host_veth_name(red, eps["r1"]), "mtu") == 1450

    async def gone() -> None:
        async with Netlink(netns.path(host)) as nl:
            left = [n for n in await nl.link_names() if n.startswith("ps")]
        assert left == []
        assert "psbr" not in netns.run(host, "iptables", "-S", "FORWARD").stdout
        assert bridge_name(red) == "psbr101"

    yield Rig(driver, red, blue, created, joined, gone)


@asynccontextmanager
async def ovs(host: str, workdir: Path) -> AsyncIterator[Rig]:
    red = Network("n-red", "red", IPNetwork("10.96.1.0/24"), vni=201)
    blue = Network("n-blue", "blue", IPNetwork("10.96.2.0/24"), vni=202)
    with ovs_in(netns.path(host), workdir) as url:
        ovsdb = Ovsdb(url)
        await ovsdb.connect()
        driver = OvsDriver(ovsdb, netns=netns.path(host), datapath_type="netdev")

        async def created() -> None:
            ids = await ovsdb.bridge_ids(INTEGRATION_BRIDGE)
            assert (ids["net-n-red"], ids["net-n-blue"], ids["owner"]) == ("1", "2", "plugstrip")

        async def joined(eps: Eps) -> None:
            nets = {"r1": red, "r2": red, "b1": blue}
            assert sorted(await ovsdb.ports(INTEGRATION_BRIDGE)) == sorted(
                host_port_name(nets[name], e) for name, e in eps.items()
            )

        async def gone() -> None:
            assert await ovsdb.ports(INTEGRATION_BRIDGE) == []
            assert "net-n-red" not in await ovsdb.bridge_ids(INTEGRATION_BRIDGE)

        try:
            yield Rig(driver, red, blue, created, joined, gone)
        finally:
            await driver.close()


def r1_of(eps: Eps) -> str:
    return eps["r1"].netns_path.rsplit("/", 1)[1]


@pytest.mark.parametrize("make", [weave, ovs], ids=["weave", "ovs"])
async def test_reach_isolation_and_teardown(
    make: Callable[[str, Path], AbstractAsyncContextManager[Rig]], tmp_path: Path
) -> None:
    with netns.namespaces(4) as (host, r1, r2, b1):
        async with make(host, tmp_path) as rig:
            driver, red, blue = rig.driver, rig.red, rig.blue
            for net in (red, blue):
                await driver.create_network(net)
                await driver.create_network(net)  # idempotent
            await rig.created()
            eps = {
                "r1": netns.endpoint(red, r1, 2, "r1"),
                "r2": netns.endpoint(red, r2, 3, "r2"),
                "b1": netns.endpoint(blue, b1, 2, "b1"),
            }
            await driver.join(red, eps["r1"])
            await driver.join(red, eps["r1"])  # a re-run after a crash: no error, same result
            await driver.join(red, eps["r2"])
            await driver.join(blue, eps["b1"])
            assert netns.ping(r1, eps["r2"].address) and netns.ping(r2, eps["r1"].address)
            # different networks: no path at all (other bridges, or other VLAN tags)
            assert not netns.ping(r1, eps["b1"].address) and not netns.ping(b1, eps["r1"].address)
            assert "mtu 1450" in netns.run(r1, "ip", "-o", "link", "show", "eth0").stdout
            await rig.joined(eps)

            for net, name in ((red, "r1"), (red, "r2"), (blue, "b1")):
                await driver.leave(net, eps[name])
                await driver.leave(net, eps[name])  # already gone: fine
            assert netns.run(r1, "ip", "link", "show", "eth0").returncode != 0
            for net in (red, blue):
                await driver.delete_network(net)
            await rig.gone()


async def test_vxlan_between_two_hosts_follows_the_remote_endpoints() -> None:
    """Two "hosts" joined by an underlay veth, a container namespace on each: one network
    across both, over kernel VXLAN (UDP 4789), to exactly the remote endpoints listed: a
    flood entry per host, an FDB entry per MAC, an ARP answer per address."""
    net = Network("n-wide", "wide", IPNetwork("10.98.1.0/24"), vni=301)
    with netns.namespaces(4) as (host_a, host_b, c_a, c_b):
        made = netns.run(
            host_a, "ip", "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", host_b
        )
        assert made.returncode == 0, made.stderr
        underlay = {host_a: IPAddress("192.168.77.1"), host_b: IPAddress("192.168.77.2")}
        for host, address in underlay.items():
            netns.run(host, "ip", "addr", "add", f"{address}/24", "dev", "u0")
            netns.run(host, "ip", "link", "set", "u0", "up")
        drivers = {h: WeaveDriver(netns=netns.path(h), local=underlay[h]) for h in underlay}
        eps = {c_a: netns.endpoint(net, c_a, 2, "ca"), c_b: netns.endpoint(net, c_b, 3, "cb")}
        for host, container in ((host_a, c_a), (host_b, c_b)):
            await drivers[host].create_network(net)
            await drivers[host].join(net, eps[container])
        assert not netns.ping(c_a, eps[c_b].address)  # nothing listed yet: nothing crosses

        def remote(container: str, host: str) -> RemoteEndpoint:
            return RemoteEndpoint(eps[container].address, eps[container].mac, underlay[host])

        stray = RemoteEndpoint(  # an endpoint of a host that has left
            IPAddress("10.98.1.9"), "02:42:0a:62:01:09", IPAddress("192.168.77.9")
        )
        await drivers[host_a].set_remotes(net, [remote(c_b, host_b), stray])
        await drivers[host_b].set_remotes(net, [remote(c_a, host_a)])
        assert netns.ping(c_a, eps[c_b].address) and netns.ping(c_b, eps[c_a].address)
        await drivers[host_a].set_remotes(net, [remote(c_b, host_b)])
        async with Netlink(netns.path(host_a)) as nl:
            vxlan = vxlan_name(net)
            assert await nl.fdb_entries(vxlan) == {  # the stray's entries are gone
                (ZERO_MAC, "192.168.77.2"),
                (eps[c_b].mac, "192.168.77.2"),
            }
            assert await nl.neighbours(vxlan) == {(str(eps[c_b].address), eps[c_b].mac)}
            assert await nl.link_attr(vxlan, "mtu") == 1450  # the underlay's, less VXLAN's
        assert netns.ping(c_a, eps[c_b].address)
        # ARP is answered on A's side: B's container is known without asking B
        arp = netns.run(c_a, "ip", "neigh", "show", str(eps[c_b].address)).stdout
        assert eps[c_b].mac in arp

        await drivers[host_a].set_remotes(net, [])  # B left: nothing to it any more
        async with Netlink(netns.path(host_a)) as nl:
            assert await nl.fdb_entries(vxlan_name(net)) == set()
            assert await nl.neighbours(vxlan_name(net)) == set()
        assert not netns.ping(c_a, eps[c_b].address)


async def test_two_ovsdb_connections_in_one_process_each_reach_their_own(tmp_path: Path) -> None:
    """ovsdbapp keeps a backend's connection on its class: without a class per Ovsdb, the
    second database opened here was answered by the first one's server (and, after the
    first was closed, by its stopped connection)."""
    with netns.namespaces(2) as (a, b):
        with (
            ovs_in(netns.path(a), tmp_path / "a") as url_a,
            ovs_in(netns.path(b), tmp_path / "b") as url_b,
        ):
            first, second = Ovsdb(url_a), Ovsdb(url_b)
            await first.ensure_bridge("pstwo", "netdev")
            assert await first.has_bridge("pstwo")
            assert not await second.has_bridge("pstwo")
            await first.close()
            await second.close()
            again = Ovsdb(url_b)  # after both closed: a fresh connection, to its own server
            await again.ensure_bridge("pstwo-b", "netdev")
            assert await again.has_bridge("pstwo-b") and not await again.has_bridge("pstwo")
            await again.close()
