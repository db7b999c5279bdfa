"""The driver contract, libnetwork's shape: create/delete a network, join/leave an endpoint.

Plain typed objects only, addresses as netaddr's (IPAM's library, one type across
netdrivers): Docker API shapes stay in the proxy and adapters. The control
plane (IPAM, the store) decides; a driver only programs the datapath for what it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers.domain.security import Count, Denial, Policy
from plugstrip.netdrivers.domain.verify import Finding


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    subnet: IPNetwork
    vni: int
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    network_id: str
    container_id: str
    address: IPAddress
    prefixlen: int  # the subnet's (netaddr's IPNetwork equates hosts of one subnet)
    mac: str
    netns_path: str  # the namespace the endpoint's interface goes into
    ifname: str = "eth0"  # its name in there
    gateway: IPAddress | None = None  # default route through it, if set
    address6: IPAddress | None = None  # on a dual-stack network
    prefixlen6: int = 64
    allowed: tuple[IPAddress, ...] = ()  # addresses it may send from besides its own (VIPs)


@dataclass(frozen=True)
class RemoteEndpoint:
    """An endpoint on another host: what a host's datapath needs to reach it."""

    address: IPAddress
    mac: str
    host: IPAddress  # the underlay address of the host it is on (where VXLAN goes)
    address6: IPAddress | None = None  # on a dual-stack network


@dataclass(frozen=True)
class RemoteChange:
    """What changed of a network's remotes since it was last programmed: endpoints that
    came (``added``) or went (``removed``; a moved one is both), and the hosts that had
    none on it before (``hosts_added``) or have none any more (``hosts_removed``)."""

    added: tuple[RemoteEndpoint, ...] = ()
    removed: tuple[RemoteEndpoint, ...] = ()
    hosts_added: tuple[IPAddress, ...] = ()
    hosts_removed: tuple[IPAddress, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.hosts_added or self.hosts_removed)


class Driver(Protocol):
    name: str
    prefixes: tuple[str, ...]  # how the host links it makes are named (doctor finds strays)

    async def create_network(self, network: Network) -> None: ...

    async def delete_network(self, network: Network) -> None: ...

    async def join(self, network: Network, endpoint: Endpoint) -> None: ...

    async def leave(self, network: Network, endpoint: Endpoint) -> None: ...

    async def set_remotes(self, network: Network, remotes: Collection[RemoteEndpoint]) -> None:
        """Make the network reach exactly ``remotes`` (the endpoints other hosts have on
        it) and their hosts: tunnels to hosts no longer listed, and entries for endpoints
        gone, are removed."""
        ...

    async def change_remotes(self, network: Network, change: RemoteChange) -> None:
        """Program only what ``change`` says: an entry per endpoint that came or went, a
        tunnel per host that came or went (removals first)."""
        ...

    def owned(self, networks: list[Network], endpoints: list[Endpoint]) -> set[str]:
        """The host's links this driver has for these networks and endpoints (its own
        networks among them): what ``prune`` keeps."""
        ...

    async def prune(self, networks: list[Network], endpoints: list[Endpoint]) -> list[str]:
        """Remove what the driver finds of its own beyond ``owned`` (left by a crash half
        way); returns the names removed."""
        ...

    def describe(self, network: Network, endpoint: Endpoint | None = None) -> dict[str, str]:
        """Where ``network`` is on this host (or, given ``endpoint``, where the endpoint
        is), device names by role, as libnetwork's endpoint info: what an operator looks
        for (``plugstrip net inspect``)."""
        ...

    async def set_policy(self, policy: Policy) -> None:
        """Enforce exactly ``policy`` (security groups) on this host's endpoints of the
        driver's networks, replacing what was enforced before (none guarded: nothing)."""
        ...

    async def counts(self) -> list[Count]:
        """The datapath's counters of the policy last set: each rule's traffic, the drops
        for no rule, spoofed frames and floods (``Policy.counted``), as the datapath has
        them now."""
        ...

    async def verify(
        self, networks: list[Network], endpoints: list[Endpoint], policy: Policy
    ) -> list[Finding]:
        """Check this host's datapath against the store (CNI's CHECK): each of
        ``endpoints`` (this host's, on ``networks``, the driver's) plugged in and bound
        as ``policy``'s bindings say, and ``policy``'s security groups enforced, none
        missing, none extra."""
        ...

    async def watch_denials(self, report: Callable[[Denial], None]) -> None:
        """Call ``report`` with each packet the datapath drops and logs (rate-limited
        there), until cancelled (at once, if it logs none)."""
        ...

    async def close(self) -> None:
        """Let go of what the driver holds open (a database connection)."""
        ...
