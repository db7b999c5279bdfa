"""``plugstrip/weave``: the kernel datapath, Weave-style.

Per network: one Linux bridge and one VXLAN device (VNI = the network's, UDP 4789, no
learning: peers come as static FDB entries). Per endpoint: a veth pair, one end on the
bridge, the other in the container. Every device gets the underlay MTU less 50 (the VXLAN
header), both veth ends included. Traffic within a bridge is accepted in iptables
(dockerd's FORWARD policy is DROP). Control-plane decisions (addresses, VNIs, the other
hosts' endpoints through ``set_remotes``) come in from the store; this only programs the
kernel, through netdrivers.netlink.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from contextlib import suppress
from socket import if_indextoname

from netaddr import IPAddress

from plugstrip.netdrivers.datapath import firewall, nflog, nft
from plugstrip.netdrivers.datapath.netlink import (
    ZERO_MAC,
    Netlink,
    ensure_endpoint_veth,
    link_name,
    plug_into_container,
    run_in,
)
from plugstrip.netdrivers.domain import verify
from plugstrip.netdrivers.domain.contract import Endpoint, Network, RemoteChange, RemoteEndpoint
from plugstrip.netdrivers.domain.security import FLOOD, SPOOFED, Count, Counted, Denial, Policy
from plugstrip.netdrivers.domain.verify import Finding

VXLAN_PORT = 4789
PREFIXES = ("psbr", "psvx", "psv")  # bridges, VXLAN devices, veth host ends
VXLAN_OVERHEAD = 50


def bridge_name(network: Network) -> str:
    return f"psbr{network.vni}"


def vxlan_name(network: Network) -> str:
    return f"psvx{network.vni}"


def host_veth_name(network: Network, endpoint: Endpoint) -> str:
    return port_name(network.id, endpoint.container_id)


def port_name(network_id: str, owner: str) -> str:
    """An endpoint's veth on the bridge (its port, that its binding names)."""
    return link_name("psv", network_id, owner)


class WeaveDriver:
    name = "plugstrip/weave"
    prefixes: tuple[str, ...] = PREFIXES

    def __init__(
        self,
        netns: str | None = None,
        local: IPAddress | None = None,
        underlay_mtu: int = 1500,
    ) -> None:
        self.netns = netns  # where the bridges live: the host's namespace unless given
        self.local = local  # the underlay address VXLAN leaves from (--advertise-addr)
        self.mtu = underlay_mtu - VXLAN_OVERHEAD
        self._policy: Policy | None = None  # as enforced (None: not yet, by this process)
        self._rules = nft.Table("inet", nft.TABLE)
        self._ports = nft.Table("bridge", nft.PORTS)

    def describe(self, network: Network, endpoint: Endpoint | None = None) -> dict[str, str]:
        if endpoint is not None:
            return {"host_interface": host_veth_name(network, endpoint)}
        return {"bridge": bridge_name(network), "vxlan": vxlan_name(network)}

    async def close(self) -> None:
        pass  # a netlink socket per operation: nothing held open

    async def set_policy(self, policy: Policy) -> None:
        """Ports bound and security groups in nftables (netdrivers.nft), in one
        transaction: a table rewritten when what it holds changed (its counters kept), or
        at start (replacing any left), else only the member sets that changed."""
        before = self._policy
        parts: list[str] = []
        written: list[tuple[nft.Table, nft.Body | None]] = []
        rules_changed = before is None or before.guarded != policy.guarded
        if not policy.guarded and rules_changed:
            parts.append(self._rules.removal())
            written.append((self._rules, None))
        elif rules_changed:
            await nft.bridges_filtered(self.netns)
            rules = nft.rules(policy)
            parts.append(self._rules.script(rules))
            written.append((self._rules, rules))
        elif before is not None:
            changed = [g for g, m in policy.members.items() if before.members.get(g) != m]
            if changed:
                parts.append(nft.members_script(policy, changed))
        if rules_changed or before is None or before.bindings != policy.bindings:
            ports = nft.ports(policy, lambda b: port_name(b.network_id, b.owner))
            parts.append(self._ports.script(ports))
            written.append((self._ports, ports))
        if parts:
            try:
                await nft.apply("".join(parts), self.netns)
            except BaseException:
                self._rules.lost()
                self._ports.lost()
                raise
        for table, wrote in written:
            table.written(wrote)
        self._policy = policy

    async def counts(self) -> list[Count]:
        if self._policy is None:
            return []
        return await nft.counts(self._policy, self.netns)

    async def verify(
        self, networks: list[Network], endpoints: list[Endpoint], policy: Policy
    ) -> list[Finding]:
        """Each endpoint's port on its network's bridge and up, bound as ``policy``'s
        bindings say (its chain in the bridge table), and the groups' table guarding
        what ``policy`` guards."""
        findings = []
        if endpoints:
            by_id = {n.id: n for n in networks}
            chains = await nft.listing("bridge", nft.PORTS)
            bound = {(b.network_id, b.owner): b for b in policy.bindings}
            detached, differing = [], []
            async with Netlink(self.netns) as nl:
                for endpoint in endpoints:
                    port = port_name(endpoint.network_id, endpoint.container_id)
                    network = by_id.get(endpoint.network_id)
                    bridge = None if network is None else await nl.index(bridge_name(network))
                    if bridge is None or await nl.index(port) is None:
                        detached.append(f"{port} (missing)")
                        continue
                    state = await nl.link_attr(port, "IFLA_OPERSTATE")
                    if await nl.link_attr(port, "IFLA_MASTER") != bridge or state == "DOWN":
                        detached.append(
                            f"{port} ({'down' if state == 'DOWN' else 'off its bridge'})"
                        )
                        continue
                    binding = bound.get((endpoint.network_id, endpoint.container_id))
                    wrong = (
                        "no binding"
                        if binding is None
                        else nft.bound_differs(chains, port, binding)
                    )
                    if wrong is not None:
                        differing.append(f"{port} ({wrong})")
            hint = (
                "ports not on their network's bridge (restart the container, or plugstrip"
                " serve: it plugs every endpoint in at start)"
            )
            findings.append(verify.bindings(self.name, len(endpoints), differing, detached, hint))
        try:
            text = await nft.listing_text("inet", nft.TABLE)
        except nft.NftError as exc:
            return [
                *findings,
                Finding(f"security groups ({self.name})", "warn", f"cannot read: {exc}"),
            ]
        findings.append(verify.groups(self.name, policy, nft.guarded_in(text), text))
        return findings

    async def watch_denials(self, report: Callable[[Denial], None]) -> None:
        """What the tables drop and log (nft.FLOW_RATE), from their NFLOG group."""
        sock = await asyncio.to_thread(nflog.open_group, self.netns)
        try:
            async for logged in nflog.receive(sock):
                report(await self._denial(logged))
        finally:
            sock.close()

    async def _denial(self, logged: nflog.Logged) -> Denial:
        policy = self._policy or Policy()
        counted = policy.counted().get(logged.prefix[1:]) or Counted(
            "", reason={nft.SPOOFED: SPOOFED, nft.FLOOD_DROPPED: FLOOD}.get(logged.prefix, "")
        )
        port = None
        if logged.in_ifindex is not None:
            with suppress(OSError):
                index = logged.in_ifindex
                port = await asyncio.to_thread(run_in, self.netns, lambda: if_indextoname(index))
        bound = next((b for b in policy.bindings if port_name(b.network_id, b.owner) == port), None)
        found = nflog.headers(logged.payload)
        return Denial(
            counted,
            found.src if found else None,
            found.dst if found else None,
            found.proto if found else "",
            found.port if found else None,
            bound.network_id if bound else "",
            bound.owner if bound else "",
        )

    async def create_network(self, network: Network) -> None:
        async with Netlink(self.netns) as nl:
            mtu = self.mtu
            vxlan_attrs: dict[str, object] = {}
            if self.local is not None:
                underlay = await nl.device_with(str(self.local))
                if underlay is None:
                    raise ConnectionError(f"no device here has the address {self.local}")
                vxlan_attrs["vxlan_local"] = str(self.local)
                vxlan_attrs["vxlan_link"] = await nl.index(underlay)
            # no multicast snooping: neighbour solicitations reach remote endpoints, whose
            # group memberships this bridge never hears
            await nl.ensure_link(bridge_name(network), "bridge", br_mcast_snooping=0)
            await nl.ensure_link(
                vxlan_name(network),
                "vxlan",
                vxlan_id=network.vni,
                vxlan_port=VXLAN_PORT,
                vxlan_learning=0,
                vxlan_proxy=1,  # ARP for remote endpoints answered here, from set_remotes
                **vxlan_attrs,
            )
            await nl.set_up(vxlan_name(network), master=bridge_name(network), mtu=mtu)
            await nl.set_up(bridge_name(network), mtu=mtu)
        await firewall.allow_bridge(bridge_name(network), self.netns)

    async def delete_network(self, network: Network) -> None:
        await firewall.forget_bridge(bridge_name(network), self.netns)
        async with Netlink(self.netns) as nl:
            await nl.delete_link(vxlan_name(network))
            await nl.delete_link(bridge_name(network))

    async def join(self, network: Network, endpoint: Endpoint) -> None:
        host_end = host_veth_name(network, endpoint)
        peer = host_end.replace("psv", "psp", 1)
        async with Netlink(self.netns) as nl:
            mtu = int(await nl.link_attr(bridge_name(network), "mtu"))
            await ensure_endpoint_veth(nl, host_end, peer, endpoint, mtu)
            await nl.set_up(host_end, master=bridge_name(network), mtu=mtu)
            await plug_into_container(nl, peer, endpoint, mtu)

    async def leave(self, network: Network, endpoint: Endpoint) -> None:
        async with Netlink(self.netns) as nl:
            await nl.delete_link(host_veth_name(network, endpoint))  # its peer goes with it

    async def set_remotes(self, network: Network, remotes: Collection[RemoteEndpoint]) -> None:
        """Program the network's VXLAN device for exactly ``remotes``: a flood entry per
        host they are on (broadcast reaches every such host, learning is off), an FDB entry
        per endpoint's MAC (unicast goes straight to its host) and a neighbour entry per
        endpoint's address, of both families (ARP and neighbour solicitations for it are
        answered here, by the device's proxy). Stale entries go first."""
        flood = {(ZERO_MAC, str(r.host)) for r in remotes}
        fdb = flood | {(r.mac, str(r.host)) for r in remotes}
        neighbours = {(address, r.mac) for r in remotes for address in _addresses(r)}
        async with Netlink(self.netns) as nl:
            vxlan = vxlan_name(network)
            if await nl.index(vxlan) is None:
                return  # not on this host (yet): create_network programs it from scratch
            current = await nl.fdb_entries(vxlan)
            for mac, dst in sorted(current - fdb):
                await nl.delete_fdb(vxlan, mac, dst)
            for mac, dst in sorted(fdb - current):
                await nl.ensure_fdb(vxlan, mac, dst)
            known = await nl.neighbours(vxlan)
            for address, _ in sorted(known - neighbours):
                await nl.delete_neighbour(vxlan, address)
            for address, mac in sorted(neighbours - known):
                await nl.set_neighbour(vxlan, address, mac)

    async def change_remotes(self, network: Network, change: RemoteChange) -> None:
        async with Netlink(self.netns) as nl:
            vxlan = vxlan_name(network)
            if await nl.index(vxlan) is None:
                return  # not on this host (yet): create_network programs it from scratch
            for r in change.removed:
                await nl.delete_fdb(vxlan, r.mac, str(r.host))
                for address in _addresses(r):
                    await nl.delete_neighbour(vxlan, address)
            for host in change.hosts_removed:
                await nl.delete_fdb(vxlan, ZERO_MAC, str(host))
            for host in change.hosts_added:
                await nl.ensure_fdb(vxlan, ZERO_MAC, str(host))
            for r in change.added:
                await nl.ensure_fdb(vxlan, r.mac, str(r.host))
                for address in _addresses(r):
                    await nl.set_neighbour(vxlan, address, r.mac)

    def owned(self, networks: list[Network], endpoints: list[Endpoint]) -> set[str]:
        by_id = {n.id: n for n in networks}
        names = {f(n) for n in networks for f in (bridge_name, vxlan_name)}
        return names | {
            host_veth_name(by_id[e.network_id], e) for e in endpoints if e.network_id in by_id
        }

    async def prune(self, networks: list[Network], endpoints: list[Endpoint]) -> list[str]:
        keep = self.owned(networks, endpoints)
        async with Netlink(self.netns) as nl:
            stray = [n for n in await nl.link_names() if n.startswith(PREFIXES) and n not in keep]
            for name in stray:
                await nl.delete_link(name)
        for name in stray:
            if name.startswith("psbr"):
                await firewall.forget_bridge(name, self.netns)
        return stray


def _addresses(remote: RemoteEndpoint) -> list[str]:
    """What a remote endpoint is answered for: its address, and its IPv6 one if any."""
    return [str(a) for a in (remote.address, remote.address6) if a is not None]
