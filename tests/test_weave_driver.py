"""The weave driver on a real kernel: a "host" namespace holds the bridges, "containers"
are namespaces of their own. Reach within a network, isolation across, MTU, teardown."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from netdrivers.contract import Network
from netdrivers.netlink import Netlink
from netdrivers.weave import WeaveDriver, bridge_name, host_veth_name, vxlan_name
from tests import netns


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


async def test_vxlan_between_two_hosts_follows_the_peer_list() -> None:
    """Two "hosts" joined by an underlay veth, a container namespace on each: one network
    across both, reached over kernel VXLAN (UDP 4789), exactly to the peers listed."""
    net = Network("n-wide", "wide", IPv4Network("10.98.1.0/24"), vni=301)
    with netns.namespaces(4) as (host_a, host_b, c_a, c_b):
        made = netns.run(
            host_a, "ip", "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", host_b
        )
        assert made.returncode == 0, made.stderr
        underlay = {host_a: "192.168.77.1", host_b: "192.168.77.2"}
        for host, address in underlay.items():
            netns.run(host, "ip", "addr", "add", f"{address}/24", "dev", "u0")
            netns.run(host, "ip", "link", "set", "u0", "up")
        drivers = {h: WeaveDriver(netns=netns.path(h), underlay="u0") for h in underlay}
        eps = {c_a: netns.endpoint(net, c_a, 2, "ca"), c_b: netns.endpoint(net, c_b, 3, "cb")}
        for host, container in ((host_a, c_a), (host_b, c_b)):
            await drivers[host].create_network(net)
            await drivers[host].join(net, eps[container])
        assert not netns.ping(c_a, eps[c_b].address)  # no peers yet: nothing crosses

        stray = IPv4Address("192.168.77.9")  # a host that has left
        await drivers[host_a].set_peers(net, [IPv4Address(underlay[host_b]), stray])
        await drivers[host_b].set_peers(net, [IPv4Address(underlay[host_a])])
        assert netns.ping(c_a, eps[c_b].address) and netns.ping(c_b, eps[c_a].address)
        await drivers[host_a].set_peers(net, [IPv4Address(underlay[host_b])])
        async with Netlink(netns.path(host_a)) as nl:
            assert await nl.flood_peers(vxlan_name(net)) == {underlay[host_b]}  # stray gone
        assert netns.ping(c_a, eps[c_b].address)

        await drivers[host_a].set_peers(net, [])  # B left: nothing to it any more
        async with Netlink(netns.path(host_a)) as nl:
            assert await nl.flood_peers(vxlan_name(net)) == set()
        assert not netns.ping(c_a, eps[c_b].address)
