"""The weave driver on a real kernel: a "host" namespace holds the bridges, "containers"
are namespaces of their own. Reach within a network, isolation across, MTU, teardown."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from plugstrip.netdrivers.contract import Network, RemoteEndpoint
from plugstrip.netdrivers.netlink import ZERO_MAC, Netlink
from plugstrip.netdrivers.weave import WeaveDriver, bridge_name, host_veth_name, vxlan_name
from tests import netns

pytestmark = pytest.mark.system  # namespaces, devices, daemons or installs of its own


async def test_reach_within_isolation_across_and_teardown() -> None:
    red = Network("n-red", "red", IPv4Network("10.97.1.0/24"), vni=101)
    blue = Network("n-blue", "blue", IPv4Network("10.97.2.0/24"), vni=102)
    with netns.namespaces(4) as (host, r1, r2, b1):
        # as dockerd leaves a host: bridged frames go through iptables, and FORWARD drops
        assert netns.run(host, "iptables", "-P", "FORWARD", "DROP").returncode == 0
        driver = WeaveDriver(netns=netns.path(host))
        for net in (red, blue):
            await driver.create_network(net)
            await driver.create_network(net)  # idempotent
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
        rules = netns.run(host, "iptables", "-S", "FORWARD").stdout
        assert rules.count("-i psbr101 -o psbr101 -j ACCEPT") == 1  # once, despite two runs
        netns.run(
            host, "iptables", "-D", "FORWARD", "-i", "psbr101", "-o", "psbr101", "-j", "ACCEPT"
        )
        assert not netns.ping(r1, eps["r2"].address)  # the control: without the rule, dropped
        await driver.create_network(red)  # re-run setup puts it back
        assert netns.ping(r1, eps["r2"].address)
        # different networks: no path at all (different bridges, no routing between them)
        assert not netns.ping(r1, eps["b1"].address) and not netns.ping(b1, eps["r1"].address)

        link = netns.run(r1, "ip", "-o", "link", "show", "eth0").stdout
        assert "mtu 1450" in link and "02:42:00:65:00:02" in link
        async with Netlink(netns.path(host)) as nl:
            assert await nl.link_attr(vxlan_name(red), "mtu") == 1450
            assert await nl.link_attr(host_veth_name(red, eps["r1"]), "mtu") == 1450

        await driver.leave(red, eps["r1"])
        await driver.leave(red, eps["r1"])  # already gone: fine
        assert netns.run(r1, "ip", "link", "show", "eth0").returncode != 0
        for net in (red, blue):
            await driver.leave(net, eps["r2"] if net is red else eps["b1"])
            await driver.delete_network(net)
        async with Netlink(netns.path(host)) as nl:
            left = [n for n in await nl.link_names() if n.startswith("ps")]
        assert left == []
        assert "psbr" not in netns.run(host, "iptables", "-S", "FORWARD").stdout
        assert bridge_name(red) == "psbr101"


async def test_vxlan_between_two_hosts_follows_the_remote_endpoints() -> None:
    """Two "hosts" joined by an underlay veth, a container namespace on each: one network
    across both, over kernel VXLAN (UDP 4789), to exactly the remote endpoints listed: a
    flood entry per host, an FDB entry per MAC, an ARP answer per address."""
    net = Network("n-wide", "wide", IPv4Network("10.98.1.0/24"), vni=301)
    with netns.namespaces(4) as (host_a, host_b, c_a, c_b):
        made = netns.run(
            host_a, "ip", "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", host_b
        )
        assert made.returncode == 0, made.stderr
        underlay = {host_a: IPv4Address("192.168.77.1"), host_b: IPv4Address("192.168.77.2")}
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
            return RemoteEndpoint(eps[container].address.ip, eps[container].mac, underlay[host])

        stray = RemoteEndpoint(  # an endpoint of a host that has left
            IPv4Address("10.98.1.9"), "02:42:0a:62:01:09", IPv4Address("192.168.77.9")
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
            assert await nl.neighbours(vxlan) == {(str(eps[c_b].address.ip), eps[c_b].mac)}
            assert await nl.link_attr(vxlan, "mtu") == 1450  # the underlay's, less VXLAN's
        assert netns.ping(c_a, eps[c_b].address)
        # ARP is answered on A's side: B's container is known without asking B
        arp = netns.run(c_a, "ip", "neigh", "show", str(eps[c_b].address.ip)).stdout
        assert eps[c_b].mac in arp

        await drivers[host_a].set_remotes(net, [])  # B left: nothing to it any more
        async with Netlink(netns.path(host_a)) as nl:
            assert await nl.fdb_entries(vxlan_name(net)) == set()
            assert await nl.neighbours(vxlan_name(net)) == set()
        assert not netns.ping(c_a, eps[c_b].address)
