"""The weave driver on a real kernel: a "host" namespace holds the bridges, "containers"
are namespaces of their own. Reach within a network, isolation across, MTU, teardown."""

from __future__ import annotations

from ipaddress import IPv4Network

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
