"""Every netlink call the drivers make, in one place (pyroute2's async API).

Steps are idempotent, as CNI's helpers are: creating what exists returns it, deleting
what is gone succeeds, so a setup can be re-run after a crash and a teardown can't fail
half way on something already removed.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import os
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.ethtool import Ethtool
from pyroute2.netlink.exceptions import NetlinkError

from plugstrip.netdrivers.domain.contract import Endpoint

T = TypeVar("T")
NUD_PERMANENT = 0x80
IFA_F_NODAD = 0x02  # an address no other endpoint can hold (IPAM says): usable at once
ZERO_MAC = "00:00:00:00:00:00"  # an FDB entry for it: where unknown and broadcast frames go


def link_name(prefix: str, *parts: str) -> str:
    """A stable interface name within IFNAMSIZ (15): the same parts, the same name."""
    return prefix + hashlib.sha256("/".join(parts).encode()).hexdigest()[: 15 - len(prefix)]


class Underlay(NamedTuple):
    mtu: int
    source: str  # where the figure came from, for logs and doctor


class Netlink:
    """Netlink in one namespace: the current one, a named one (``ip netns``, never created
    here), or a path (``/proc/PID/ns/net``)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr: AsyncIPRoute | None = None
        self._sock: socket.socket | None = None

    async def __aenter__(self) -> Netlink:
        if self.netns:
            # Our own socket, made in the namespace by a thread: pyroute2 would fork a
            # helper for it, and a forked child of the proxy shares its signal wakeup fd
            # (the helper's SIGTERM would reach the proxy as its own).
            self._sock = await asyncio.to_thread(run_in, self.netns, _route_socket)
            self._ipr = AsyncIPRoute(use_socket=self._sock)
        else:
            self._ipr = AsyncIPRoute()
        await self._ipr.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._ipr is not None
        try:
            await self._ipr.__aexit__(kind, exc, tb)
        finally:
            if self._sock is not None:
                self._sock.close()

    @property
    def ipr(self) -> AsyncIPRoute:
        assert self._ipr is not None, "use Netlink as an async context manager"
        return self._ipr

    async def index(self, name: str) -> int | None:
        try:
            links = await self.ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        return int(links[0]["index"])

    async def link_attr(self, name: str, attr: str) -> Any:
        links = await self.ipr.link("get", ifname=name)
        return links[0].get(attr)

    async def ensure_link(self, name: str, kind: str, **attrs: Any) -> int:
        """Create ``name`` of ``kind`` unless it exists; its index either way."""
        index = await self.index(name)
        if index is None:
            try:
                await self.ipr.link("add", ifname=name, kind=kind, **attrs)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:  # created meanwhile: fine
                    raise
            index = await self.index(name)
        assert index is not None
        return index

    async def ensure_veth(self, name: str, peer: str, mtu: int) -> int:
        return await self.ensure_link(name, "veth", peer=peer, mtu=mtu)

    async def set_up(self, name: str, master: str | None = None, mtu: int | None = None) -> None:
        attrs: dict[str, Any] = {"state": "up"}
        if master is not None:
            attrs["master"] = await self.index(master)
        if mtu is not None:
            attrs["mtu"] = mtu
        await self.ipr.link("set", ifname=name, **attrs)

    async def move_to_netns(self, name: str, netns_path: str) -> None:
        """Move ``name`` into another namespace (by path: ``/proc/PID/ns/net``)."""
        fd = os.open(netns_path, os.O_RDONLY)
        try:
            await self.ipr.link("set", index=await self.index(name), net_ns_fd=fd)
        finally:
            os.close(fd)

    async def rename(self, name: str, new_name: str) -> None:
        """Rename a link that is down (a veth end just moved into a container)."""
        await self.ipr.link("set", index=await self.index(name), ifname=new_name)

    async def delete_link(self, name: str) -> None:
        try:
            await self.ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise

    async def ensure_address(self, name: str, address: str, prefixlen: int) -> None:
        v6 = {"family": socket.AF_INET6, "flags": IFA_F_NODAD} if ":" in address else {}
        try:
            await self.ipr.addr(
                "add", index=await self.index(name), address=address, prefixlen=prefixlen, **v6
            )
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    async def ensure_default_route(self, gateway: str) -> None:
        try:
            await self.ipr.route("add", dst="default", gateway=gateway)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    async def ensure_fdb(self, vxlan: str, mac: str, dst: str) -> None:
        """A static FDB entry: frames for ``mac`` (all-zero: flooding) go to ``dst``."""
        try:  # append: the all-zero MAC takes one entry per peer
            await self.ipr.fdb("append", ifindex=await self.index(vxlan), lladdr=mac, dst=dst)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise

    async def fdb_entries(self, vxlan: str) -> set[tuple[str, str]]:
        """A VXLAN device's (MAC, destination) entries: the all-zero MAC's are the peers it
        floods to, the others say which host a MAC is behind."""
        index = await self.index(vxlan)
        found = set()
        async for entry in await self.ipr.fdb("dump"):
            dst = entry.get("NDA_DST")
            if entry.get("ifindex") == index and dst:
                found.add((str(entry.get("NDA_LLADDR")), str(dst)))
        return found

    async def flood_peers(self, vxlan: str) -> set[str]:
        """The peers a VXLAN device floods to: the destinations of its all-zero entries."""
        return {dst for mac, dst in await self.fdb_entries(vxlan) if mac == ZERO_MAC}

    async def delete_fdb(self, vxlan: str, mac: str, dst: str) -> None:
        try:
            await self.ipr.fdb("del", ifindex=await self.index(vxlan), lladdr=mac, dst=dst)
        except NetlinkError as exc:
            if exc.code != errno.ENOENT:
                raise

    async def neighbours(self, name: str) -> set[tuple[str, str]]:
        """The permanent (address, MAC) neighbour entries of device ``name``."""
        index = await self.index(name)
        found = set()
        async for entry in await self.ipr.neigh("dump", ifindex=index):
            if entry.get("ifindex") == index and entry["state"] & NUD_PERMANENT:
                found.add((str(entry.get("NDA_DST")), str(entry.get("NDA_LLADDR"))))
        return found

    async def set_neighbour(self, name: str, address: str, mac: str) -> None:
        await self.ipr.neigh(
            "replace",
            ifindex=await self.index(name),
            dst=address,
            lladdr=mac,
            state=NUD_PERMANENT,
            family=socket.AF_INET6 if ":" in address else socket.AF_INET,
        )

    async def delete_neighbour(self, name: str, address: str) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            await self.ipr.neigh("del", ifindex=await self.index(name), dst=address, family=family)
        except NetlinkError as exc:
            if exc.code != errno.ENOENT:
                raise

    async def device_with(self, address: str) -> str | None:
        """The device carrying ``address``, if any."""
        async for entry in await self.ipr.addr("dump"):
            if entry.get("IFA_ADDRESS") == address or entry.get("IFA_LOCAL") == address:
                links = await self.ipr.link("get", index=entry["index"])
                return str(links[0].get("ifname"))
        return None

    async def underlay(self, address: str | None = None) -> Underlay:
        """The MTU of the device VXLAN leaves from, and which device that is: the one
        carrying ``address`` if given, else the default route's; 1500 with neither."""
        source = "--advertise-addr" if address is not None else "default route"
        name: str | None = None
        if address is not None:
            name = await self.device_with(address)
        else:
            async for route in await self.ipr.route("dump", table=254):
                if route.get("dst_len") == 0 and route.get("oif"):
                    name = str(
                        (await self.ipr.link("get", index=route.get("oif")))[0].get("ifname")
                    )
                    break
        if name is None:
            return Underlay(1500, f"no {source} device")
        return Underlay(int(await self.link_attr(name, "mtu")), f"{name}, {source}")

    async def link_names(self) -> list[str]:
        return [str(link.get("ifname")) async for link in await self.ipr.link("dump")]


async def ensure_endpoint_veth(
    host: Netlink, host_end: str, peer: str, endpoint: Endpoint, mtu: int
) -> None:
    """The veth pair of an endpoint, made anew if the one there is stale: its container end
    in neither this namespace nor the endpoint's (it is in a namespace the container has
    left, kept alive by something holding it), as after the daemon restarted a holder."""
    if await host.index(host_end) is not None and await host.index(peer) is None:
        async with Netlink(endpoint.netns_path) as nl:
            plugged = await nl.index(endpoint.ifname) is not None
        if not plugged:
            await host.delete_link(host_end)  # its stale peer goes with it
    await host.ensure_veth(host_end, peer, mtu)


async def plug_into_container(host: Netlink, peer: str, endpoint: Endpoint, mtu: int) -> None:
    """The container half of an endpoint, shared by the drivers: ``peer`` (a veth end made
    in ``host``'s namespace) moves into the container, is renamed, addressed and brought up
    there, with the default route if the endpoint has a gateway."""
    if await host.index(peer) is not None:  # not moved yet (also on a re-run after a crash)
        await host.move_to_netns(peer, endpoint.netns_path)
    name = endpoint.ifname
    async with Netlink(endpoint.netns_path) as nl:
        if await nl.index(name) is None:
            await nl.rename(peer, name)
        await nl.ipr.link("set", ifname=name, address=endpoint.mac, mtu=mtu)
        await nl.ensure_address(name, str(endpoint.address), endpoint.prefixlen)
        if endpoint.address6 is not None:
            # dockerd turns IPv6 off in namespaces not on its IPv6 networks, new devices too
            await asyncio.to_thread(run_in, endpoint.netns_path, lambda: _ipv6_on(name))
            await nl.ensure_address(name, str(endpoint.address6), endpoint.prefixlen6)
        await nl.set_up(name)
        if endpoint.gateway is not None:
            await nl.ensure_default_route(str(endpoint.gateway))


def _ipv6_on(name: str) -> None:
    """IPv6 on for device ``name`` of the calling thread's namespace (its sysctl tree is
    the namespace's)."""
    with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as sysctl:
        sysctl.write("0")


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def run_in(netns: str | None, fn: Callable[[], T]) -> T:
    """Call ``fn`` with the calling thread in namespace ``netns`` (a name under
    /var/run/netns or a path; None: stay), then come back. Sockets made by ``fn`` keep that
    namespace. Blocking: call it through ``asyncio.to_thread``, never on a loop's thread."""
    if netns is None:
        return fn()
    path = netns if netns.startswith("/") else f"/var/run/netns/{netns}"
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            return fn()
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def socket_in(netns_path: str, kind: socket.SocketKind, address: tuple[str, int]) -> socket.socket:
    """An IPv4 socket bound to ``address`` inside another namespace (blocking, as run_in)."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, kind)
        try:
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    return run_in(netns_path, make)


def _route_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)


_TX_CHECKSUMS = ("tx-checksum-ip-generic", "tx-checksum-ipv4", "tx-checksum-ipv6")


async def tx_checksum_off(netns: str | None, *names: str) -> None:
    """Turn off transmit checksum offload on veths: the OVS userspace datapath forwards
    the packets with their checksums never filled in, and TCP peers drop them (ICMP,
    checksummed in software, works either way). Done before an end moves into a container,
    as features travel with the device."""

    def turn_off() -> None:
        tool = Ethtool()
        try:
            for name in names:
                features = tool.get_features(name)
                for key in _TX_CHECKSUMS:
                    if key in features.features:
                        features.features[key].enable = False
                tool.set_features(name, features)
        finally:
            tool.close()

    await asyncio.to_thread(run_in, netns, turn_off)
