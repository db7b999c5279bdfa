"""The netlink helpers on a real kernel, in throwaway namespaces: a "host" namespace with a
bridge and a VXLAN device, two "containers" on veths, traffic between them."""

from __future__ import annotations

import pytest

from plugstrip.netdrivers.datapath.netlink import Netlink
from tests import netns

pytestmark = pytest.mark.system  # namespaces, devices, daemons or installs of its own


async def attach(host: str, container: str, name: str, address: str) -> None:
    async with Netlink(netns.path(host)) as nl:
        await nl.ensure_veth(name, f"{name}p", mtu=1450)
        await nl.set_up(name, master="br42")
        await nl.move_to_netns(f"{name}p", netns.path(container))
    async with Netlink(netns.path(container)) as nl:
        await nl.rename(f"{name}p", "eth1")
        await nl.ensure_address("eth1", address, 24)
        await nl.ensure_address("eth1", address, 24)  # again: idempotent
        await nl.set_up("eth1")
        await nl.ensure_default_route("10.99.0.1")


async def test_bridge_vxlan_veths_idempotent_and_traffic_flows() -> None:
    with netns.namespaces(3) as (host, a, b):
        async with Netlink(netns.path(host)) as nl:
            for _ in range(2):  # every step twice: nothing fails the second time
                bridge = await nl.ensure_link("br42", "bridge")
                vxlan = await nl.ensure_link(
                    "vx42", "vxlan", vxlan_id=42, vxlan_port=4789, vxlan_learning=0
                )
                await nl.set_up("vx42", master="br42", mtu=1450)
                await nl.set_up("br42", mtu=1450)
            assert bridge != vxlan
            # A unicast entry for a MAC no one uses: nothing floods to it, and its
            # destination has no route out of this throwaway namespace (nothing is sent).
            await nl.ensure_fdb("vx42", "02:00:00:00:00:42", "10.98.0.9")
            await nl.ensure_fdb("vx42", "02:00:00:00:00:42", "10.98.0.9")
            assert await nl.link_attr("vx42", "mtu") == 1450
        await attach(host, a, "psa", "10.99.0.2")
        await attach(host, b, "psb", "10.99.0.3")
        ping = netns.run(a, "busybox", "ping", "-c", "2", "-W", "2", "10.99.0.3")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        fdb = netns.run(host, "bridge", "fdb", "show", "dev", "vx42")
        assert "02:00:00:00:00:42 dst 10.98.0.9" in fdb.stdout
        route = netns.run(a, "ip", "route", "show", "default")
        assert "via 10.99.0.1 dev eth1" in route.stdout
        async with Netlink(netns.path(host)) as nl:
            await nl.delete_link("psa")
            await nl.delete_link("psa")  # already gone: fine
            assert "psa" not in await nl.link_names()
            assert await nl.index("psa") is None
