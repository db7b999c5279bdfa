"""``plugstrip/ovs``: Open vSwitch through OVSDB, SocketPlane-style.

One integration bridge; each network gets a local VLAN tag (recorded in the bridge's
``external_ids`` as ``net-<id>``, so it survives a restart), and each endpoint is a veth
whose host end is an access port with that tag: networks are separate broadcast domains
on one bridge. On the userspace (netdev) datapath the veths get transmit checksum offload
turned off, or TCP through OVS fails. Other hosts are reached through VXLAN ports keyed by
the network's VNI, one per peer host, carrying the network's VLAN (``set_remotes``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

from netaddr import IPAddress

from plugstrip.netdrivers.datapath import ovs_flows
from plugstrip.netdrivers.datapath.netlink import (
    Netlink,
    ensure_endpoint_veth,
    link_name,
    plug_into_container,
    tx_checksum_off,
)
from plugstrip.netdrivers.datapath.ovsdb import Ovsdb, detect_datapath, rundir
from plugstrip.netdrivers.domain import verify
from plugstrip.netdrivers.domain.contract import Endpoint, Network, RemoteChange, RemoteEndpoint
from plugstrip.netdrivers.domain.security import Count, Denial, Policy, binding
from plugstrip.netdrivers.domain.verify import Finding

INTEGRATION_BRIDGE = "psint"
LOCAL_PORT = 65534  # OpenFlow's number of a bridge's own port
WATCH_AGAIN = 2.0  # seconds before the flow log's monitor connects again
PREFIX = "pso"  # veth host ends (access ports)
TUNNEL_PREFIX = "psx"  # VXLAN ports, one per network and peer host
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50
MAX_TAG = 4094


def host_port_name(network: Network, endpoint: Endpoint) -> str:
    return port_name(network.id, endpoint.container_id)


def port_name(network_id: str, owner: str) -> str:
    """An endpoint's access port (that its binding names)."""
    return link_name(PREFIX, network_id, owner)


def tunnel_name(network: Network, host: IPAddress) -> str:
    return link_name(TUNNEL_PREFIX, network.id, str(host))


def bridge_socket(ovsdb_url: str) -> str:
    """The integration bridge's OpenFlow socket, beside the OVSDB socket ``ovsdb_url``."""
    return f"unix:{rundir(ovsdb_url)}/{INTEGRATION_BRIDGE}.mgmt"


class OvsDriver:
    name = "plugstrip/ovs"
    prefixes: tuple[str, ...] = (PREFIX,)  # its tunnels are OVS ports, not host links

    def __init__(
        self,
        ovsdb: Ovsdb,
        netns: str | None = None,
        datapath_type: str | None = None,
        underlay_mtu: int = 1500,
    ) -> None:
        self.ovsdb = ovsdb
        self.netns = netns  # where the veth host ends live: the host's namespace unless given
        self.datapath_type = datapath_type or detect_datapath()
        self.mtu = underlay_mtu - VXLAN_OVERHEAD
        self._programmer = ovs_flows.Programmer()
        self._policy = Policy()  # as last programmed: floods name the tunnels too
        self._ofports: dict[str, int] = {}  # as set_policy last read them
        self._meter: bool | None = None  # the flow log's meter is on the bridge (None: unknown)
        self._metered_once = asyncio.Event()  # ... known at least once: the flow log may start

    def describe(self, network: Network, endpoint: Endpoint | None = None) -> dict[str, str]:
        if endpoint is not None:
            return {"host_interface": host_port_name(network, endpoint)}
        return {"bridge": INTEGRATION_BRIDGE}

    async def close(self) -> None:
        await self.ovsdb.close()

    async def set_policy(self, policy: Policy) -> None:
        """Ports bound and security groups as OpenFlow with conntrack
        (netdrivers.ovs_flows), the bridge's flows reconciled to them (nothing bound or
        guarded: switching as before). A binding whose port is not on the bridge yet is
        left out: ``join`` binds the port before its container end is plugged in."""
        try:
            if not await self.ovsdb.has_bridge(INTEGRATION_BRIDGE):
                return
        except ConnectionError:
            if policy.guarded or policy.bindings:
                raise
            return  # no Open vSwitch here: nothing of plugstrip's in it to clear
        ofports = self._ofports = await self.ovsdb.ofports()
        tunnels = {}
        for network in {b.network_id for b in policy.bindings} if policy.guarded else ():
            names = await self.ovsdb.ports_with("network", network)
            tunnels[network] = [
                ofports[n] for n in names if n.startswith(TUNNEL_PREFIX) and n in ofports
            ]
        logged = await self._metered()
        wanted = ovs_flows.flows(
            policy, lambda b: ofports.get(port_name(b.network_id, b.owner)), tunnels, logged
        )
        try:
            await self._programmer.program(bridge_socket(self.ovsdb.url), wanted)
        except BaseException:
            self._meter = None  # the bridge may be new (OVS restarted): its meter, again
            raise
        self._policy = policy

    async def _metered(self) -> bool:
        """Whether the flow log's meter is on the bridge (put there the first time): a
        datapath without meters logs no drops (each would go to userspace unlimited)."""
        if self._meter is None:
            socket = bridge_socket(self.ovsdb.url)
            features = await ovs_flows.ofctl("meter-features", socket)
            self._meter = "max_meter:0" not in features.replace(" ", "")
            self._metered_once.set()
            if self._meter:
                meter = f"meter={ovs_flows.METER},pktps,burst,band=type=drop,"
                meter += f"rate={ovs_flows.FLOW_RATE},burst_size={ovs_flows.FLOW_RATE}"
                try:
                    await ovs_flows.ofctl("add-meter", socket, meter)
                except RuntimeError:
                    await ovs_flows.ofctl("mod-meter", socket, meter)  # there already
        return self._meter

    async def verify(
        self, networks: list[Network], endpoints: list[Endpoint], policy: Policy
    ) -> list[Finding]:
        """Each endpoint's port attached by ovs-vswitchd (numbered) and bound as
        ``policy``'s bindings say (its table-0 flows), and the bridge's flows guarding
        what ``policy`` guards."""
        findings = []
        try:
            ofports = await self.ovsdb.ofports()
        except ConnectionError as exc:
            if not (endpoints or policy.guarded):
                return []  # no Open vSwitch, and nothing of plugstrip's to be in it
            return [Finding(f"port bindings ({self.name})", "fail", str(exc))]
        try:
            listing = await ovs_flows.ofctl("dump-flows", bridge_socket(self.ovsdb.url))
        except RuntimeError:
            listing = ""  # no bridge: nothing bound or guarded here
        if endpoints:
            bound = {(b.network_id, b.owner): b for b in policy.bindings}
            detached, differing = [], []
            for endpoint in endpoints:
                port = port_name(endpoint.network_id, endpoint.container_id)
                binding = bound.get((endpoint.network_id, endpoint.container_id))
                if port not in ofports:
                    detached.append(port)
                elif binding is None:
                    differing.append(f"{port} (no binding)")
                elif (
                    wrong := ovs_flows.bound_differs(listing, ofports[port], binding)
                ) is not None:
                    differing.append(f"{port} ({wrong})")
            hint = (
                "ports not attached by ovs-vswitchd (no OpenFlow number); its datapath may"
                " not be open (is a second ovs-vswitchd running here?)"
            )
            findings.append(verify.bindings(self.name, len(endpoints), differing, detached, hint))
        findings.append(verify.groups(self.name, policy, ovs_flows.guarded_in(listing), listing))
        return findings

    async def watch_denials(self, report: Callable[[Denial], None]) -> None:
        """The drops the bridge sends to a controller (through its meter), read as
        ``ovs-ofctl monitor`` prints them; again after the switch went away."""
        while True:
            await self._metered_once.wait()
            if self._meter:
                proc = await asyncio.create_subprocess_exec(
                    "ovs-ofctl",
                    "-O",
                    "OpenFlow13",
                    "monitor",
                    bridge_socket(self.ovsdb.url),
                    "65534",
                    "-P",
                    "nxt_packet_in",
                    "--names",
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,  # where it prints them, unbuffered
                )
                try:
                    assert proc.stderr is not None
                    head = ""
                    async for raw in proc.stderr:
                        line = raw.decode(errors="replace").strip()
                        if "PACKET_IN" in line:
                            head = line
                        elif head:
                            denial = ovs_flows.denial(self._policy, head, line, self._owner_of)
                            head = ""
                            if denial is not None:
                                report(denial)
                finally:
                    if proc.returncode is None:
                        proc.kill()
                    await proc.wait()
            await asyncio.sleep(WATCH_AGAIN)

    def _owner_of(self, port: str) -> tuple[str, str]:
        """The (network, owner) of the endpoint whose port is ``port`` (its name, or its
        OpenFlow number, as ovs-ofctl prints it)."""
        port = port.strip('"')
        for bound in self._policy.bindings:
            name = port_name(bound.network_id, bound.owner)
            if port in (name, str(self._ofports.get(name))):
                return bound.network_id, bound.owner
        return "", ""

    async def counts(self) -> list[Count]:
        if not (self._policy.guarded or self._policy.bindings):
            return []
        dump = await ovs_flows.ofctl("dump-flows", bridge_socket(self.ovsdb.url))
        return ovs_flows.counts(self._policy, dump)

    async def _tunnels_changed(self) -> None:
        if self._policy.guarded:  # floods go to the network's tunnels by hand
            await self.set_policy(self._policy)

    async def create_network(self, network: Network) -> None:
        await self.ovsdb.ensure_bridge(INTEGRATION_BRIDGE, self.datapath_type)
        await self._tag(network)

    async def delete_network(self, network: Network) -> None:
        await self.ovsdb.remove_bridge_id(INTEGRATION_BRIDGE, f"net-{network.id}")

    async def join(self, network: Network, endpoint: Endpoint) -> None:
        tag = await self._tag(network)
        host_end = host_port_name(network, endpoint)
        peer = host_end.replace("pso", "psq", 1)
        async with Netlink(self.netns) as nl:
            await ensure_endpoint_veth(nl, host_end, peer, endpoint, self.mtu)
            fresh = await nl.index(peer) is not None  # a new pair, its peer not moved yet
            if fresh and self.datapath_type == "netdev":
                await tx_checksum_off(self.netns, host_end, peer)
            await nl.set_up(host_end, mtu=self.mtu)
            if fresh:  # a port left from the namespace before (a restart) is attached anew
                await self.ovsdb.delete_port(host_end)
            await self.ovsdb.ensure_port(
                INTEGRATION_BRIDGE,
                host_end,
                tag,
                {"network": network.id, "container": endpoint.container_id},
            )
            await self._bind(network, endpoint, host_end)
            await plug_into_container(nl, peer, endpoint, self.mtu)

    async def _bind(self, network: Network, endpoint: Endpoint, port: str) -> None:
        """The port bound to the endpoint's MAC and addresses before anything can be sent
        from it: its container end is not plugged in yet."""
        number = (await self.ovsdb.ofports()).get(port)
        if number is None:
            raise RuntimeError(
                f"ovs-vswitchd did not attach port {port} (its datapath may not be open:"
                " see plugstrip doctor)"
            )
        addresses = (endpoint.address, endpoint.address6, *endpoint.allowed)
        bound = binding(network.id, endpoint.container_id, endpoint.mac, addresses)
        logged = await self._metered()
        await self._programmer.add(
            bridge_socket(self.ovsdb.url), ovs_flows.port_flows(bound, number, logged)
        )

    async def leave(self, network: Network, endpoint: Endpoint) -> None:
        name = host_port_name(network, endpoint)
        await self.ovsdb.delete_port(name)
        async with Netlink(self.netns) as nl:
            await nl.delete_link(name)

    async def set_remotes(self, network: Network, remotes: Collection[RemoteEndpoint]) -> None:
        """One VXLAN port keyed by the network's VNI per host its remote endpoints are on,
        tagged with the network's VLAN: the bridge's learning (NORMAL) does the rest, as
        it does for local ports. Ports to hosts no longer listed are removed."""
        if not await self.ovsdb.has_bridge(INTEGRATION_BRIDGE):
            return  # nothing of this network here yet
        tag = await self._tag(network)
        wanted = {tunnel_name(network, r.host): r.host for r in remotes}
        for host in sorted(set(wanted.values())):
            await self._tunnel(network, tag, host)
        for name in await self.ovsdb.ports_with("network", network.id):
            if name.startswith(TUNNEL_PREFIX) and name not in wanted:
                await self.ovsdb.delete_port(name)
        await self._tunnels_changed()

    async def change_remotes(self, network: Network, change: RemoteChange) -> None:
        """Endpoints are the bridge's to learn: only hosts that came or went change a port."""
        if not (change.hosts_added or change.hosts_removed):
            return
        if not await self.ovsdb.has_bridge(INTEGRATION_BRIDGE):
            return
        for host in change.hosts_removed:
            await self.ovsdb.delete_port(tunnel_name(network, host))
        tag = await self._tag(network)
        for host in change.hosts_added:
            await self._tunnel(network, tag, host)
        await self._tunnels_changed()

    def owned(self, networks: list[Network], endpoints: list[Endpoint]) -> set[str]:
        by_id = {n.id: n for n in networks}
        return {host_port_name(by_id[e.network_id], e) for e in endpoints if e.network_id in by_id}

    async def prune(self, networks: list[Network], endpoints: list[Endpoint]) -> list[str]:
        keep = self.owned(networks, endpoints)
        bridge = await self.ovsdb.has_bridge(INTEGRATION_BRIDGE)
        async with Netlink(self.netns) as nl:
            links = [n for n in await nl.link_names() if n.startswith(PREFIX) and n not in keep]
            ports = await self.ovsdb.ports(INTEGRATION_BRIDGE) if bridge else []
            ports = [p for p in ports if p.startswith(PREFIX)]
            stray = sorted(set(links) | {p for p in ports if p not in keep})
            for name in stray:
                await self.ovsdb.delete_port(name)
                await nl.delete_link(name)
        known = {f"net-{n.id}" for n in networks}
        for name in await self.ovsdb.ports(INTEGRATION_BRIDGE) if bridge else []:
            if name.startswith(TUNNEL_PREFIX) and await self._network_of(name) not in known:
                await self.ovsdb.delete_port(name)
                stray.append(name)
        for key in await self.ovsdb.bridge_ids(INTEGRATION_BRIDGE) if bridge else {}:
            if key.startswith("net-") and key not in known:
                await self.ovsdb.remove_bridge_id(INTEGRATION_BRIDGE, key)
                stray.append(key)
        return stray

    async def _network_of(self, port: str) -> str:
        ids = await self.ovsdb.interface_ids(port)
        return f"net-{ids.get('network', '')}"

    async def _tunnel(self, network: Network, tag: int, host: IPAddress) -> None:
        await self.ovsdb.ensure_tunnel(
            INTEGRATION_BRIDGE,
            tunnel_name(network, host),
            tag,
            {"remote_ip": str(host), "key": str(network.vni), "dst_port": str(VXLAN_PORT)},
            {"network": network.id, "peer": str(host)},
        )

    async def _tag(self, network: Network) -> int:
        """The network's local VLAN tag: the one recorded, else the lowest free one."""
        ids = await self.ovsdb.bridge_ids(INTEGRATION_BRIDGE)
        key = f"net-{network.id}"
        if key in ids:
            return int(ids[key])
        used = {int(v) for k, v in ids.items() if k.startswith("net-")}
        tag = next((t for t in range(1, MAX_TAG + 1) if t not in used), None)
        if tag is None:
            raise RuntimeError(f"no free VLAN tag on {INTEGRATION_BRIDGE}")
        await self.ovsdb.set_bridge_ids(INTEGRATION_BRIDGE, {**ids, key: str(tag)})
        return tag
