"""The OVS driver on a real Open vSwitch (userspace datapath) running in a test "host"
namespace: reach within a network, isolation across (VLAN tags), state in OVSDB, teardown."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from plugstrip.netdrivers.contract import Network
from plugstrip.netdrivers.ovs import INTEGRATION_BRIDGE, OvsDriver, host_port_name
from plugstrip.netdrivers.ovsdb import Ovsdb
from tests import netns
from tests.ovs import ovs_in

pytestmark = pytest.mark.system  # namespaces, devices, daemons or installs of its own


async def test_ovs_reach_isolation_and_teardown(tmp_path: Path) -> None:
    red = Network("n-red", "red", IPv4Network("10.96.1.0/24"), vni=201)
    blue = Network("n-blue", "blue", IPv4Network("10.96.2.0/24"), vni=202)
    with netns.namespaces(4) as (host, r1, r2, b1), ovs_in(netns.path(host), tmp_path) as url:
        ovsdb = Ovsdb(url)
        await ovsdb.connect()
        driver = OvsDriver(ovsdb, netns=netns.path(host), datapath_type="netdev")
        for net in (red, blue, red):  # the repeat is a no-op
            await driver.create_network(net)
        ids = await ovsdb.bridge_ids(INTEGRATION_BRIDGE)
        assert (ids["net-n-red"], ids["net-n-blue"], ids["owner"]) == ("1", "2", "plugstrip")

        eps = [
            netns.endpoint(red, r1, 2, "r1"),
            netns.endpoint(red, r2, 3, "r2"),
            netns.endpoint(blue, b1, 2, "b1"),
        ]
        for net, ep in zip((red, red, blue), eps, strict=True):
            await driver.join(net, ep)
        await driver.join(red, eps[0])  # a re-run after a crash: no error
        assert netns.ping(r1, eps[1].address) and netns.ping(r2, eps[0].address)
        assert not netns.ping(r1, eps[2].address) and not netns.ping(
            b1, eps[0].address
        )  # other tag

        assert sorted(await ovsdb.ports(INTEGRATION_BRIDGE)) == sorted(
            host_port_name(n, e) for n, e in zip((red, red, blue), eps, strict=True)
        )
        assert "mtu 1450" in netns.run(r1, "ip", "-o", "link", "show", "eth0").stdout

        for net, ep in zip((red, red, blue), eps, strict=True):
            await driver.leave(net, ep)
            await driver.leave(net, ep)  # already gone: fine
        for net in (red, blue):
            await driver.delete_network(net)
        assert await ovsdb.ports(INTEGRATION_BRIDGE) == []
        assert "net-n-red" not in await ovsdb.bridge_ids(INTEGRATION_BRIDGE)
        assert netns.run(r1, "ip", "link", "show", "eth0").returncode != 0
