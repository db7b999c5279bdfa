"""The state store's contract: its records, the ``Store`` protocol and pure helpers.

Every method that hands something out runs the IPAM decision and its write as one
transaction, so nothing is handed out twice. The backends are modules of their own
(``sqlite``, the embedded default for one host; ``etcd``, shared by hosts, with
compare-and-swap); ``factory.open_store`` picks one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers.domain import ipam
from plugstrip.netdrivers.domain.errors import Exhausted, Invalid
from plugstrip.netdrivers.domain.security import Group, Rule

T = TypeVar("T")
GroupChange = Callable[["Group | None"], "Group | None"]
STORE_FILE = "networks.db"  # the embedded store, in the state directory
HOST_ID_FILE = "host-id"
MAX_VNI = (1 << 24) - 1


@dataclass(frozen=True)
class NetworkSpec:
    """What a user asked for; ``subnet`` None means the next free one of the pool."""

    name: str
    driver: str
    subnet: IPNetwork | None = None
    gateway: IPAddress | None = None
    options: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    internal: bool = False
    ipv6: bool = False  # dual-stack: ``subnet6``, or (None) the next free one of the pool
    subnet6: IPNetwork | None = None
    gateway6: IPAddress | None = None
    # Docker's --aux-address: addresses IPAM never hands out (the VIPs an endpoint's
    # allowed addresses name), by name
    aux: dict[str, IPAddress] = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkRecord:
    id: str
    name: str
    driver: str
    subnet: IPNetwork
    gateway: IPAddress
    vni: int
    options: dict[str, str]
    labels: dict[str, str]
    internal: bool
    created: float  # seconds since the epoch
    subnet6: IPNetwork | None = None  # dual-stack: addresses paired with IPv4's (ipam)
    aux: dict[str, IPAddress] = field(default_factory=dict)  # reserved, by name

    def reserved(self) -> frozenset[int]:
        """The host numbers (as IPv4 addresses) IPAM does not hand out: the aux
        addresses', an IPv6 one's by its IPv4 twin."""
        return frozenset(
            int(a)
            if self.subnet6 is None or a.version == 4
            else int(ipam.paired(a, self.subnet6, self.subnet))
            for a in self.aux.values()
        )

    @property
    def gateway6(self) -> IPAddress | None:
        if self.subnet6 is None:
            return None
        return ipam.paired(self.gateway, self.subnet, self.subnet6)

    def address6(self, address: IPAddress) -> IPAddress | None:
        """The IPv6 twin of an endpoint's IPv4 ``address``, on a dual-stack network."""
        if self.subnet6 is None:
            return None
        return ipam.paired(address, self.subnet, self.subnet6)


@dataclass(frozen=True)
class EndpointMeta:
    """What the edge recorded of an endpoint beside its address (opaque to IPAM).

    Kept as the JSON object it always was, defaults left out: a key a record lacks (one
    written before the key existed) reads as its default, and a key this version does not
    know (one a newer host wrote) is ignored, but kept when the record is rewritten."""

    host: str | None = None  # the host that plugs it (None: written before hosts were)
    ifname: str | None = None  # its interface in the namespace (ethpsN)
    container: str | None = None  # its container's id (a holder's owner is another id)
    name: str = ""  # its container's name, for names and inspect
    aliases: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # its security groups (none: open within its network)
    allowed: tuple[IPAddress, ...] = ()  # aux addresses it may send from
    requested: str | None = None  # the --ip and --ip6 it was given, as given (IPAMConfig)
    requested6: str | None = None
    mac: str | None = None  # the MAC it was given (else one derived from its address)

    def is_on(self, host: str) -> bool:
        # endpoints made before hosts were recorded are a single host's: any asker's
        return (self.host or host) == host

    def to_json(self, old: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The record's JSON, with the keys of ``old`` (the one it replaces) that are not
        fields of this version."""
        known = {f.name for f in fields(self)}
        doc = {k: v for k, v in (old or {}).items() if k not in known}
        for f in fields(self):
            value = getattr(self, f.name)
            if value not in (None, "", ()):
                doc[f.name] = [str(v) for v in value] if isinstance(value, tuple) else value
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> EndpointMeta:
        def text(key: str) -> str | None:
            value = doc.get(key)
            return None if value in (None, "") else str(value)

        def texts(key: str) -> tuple[str, ...]:
            return tuple(str(v) for v in doc.get(key) or ())

        return cls(
            host=text("host"),
            ifname=text("ifname"),
            container=text("container"),
            name=text("name") or "",
            aliases=texts("aliases"),
            groups=texts("groups"),
            allowed=tuple(IPAddress(a) for a in texts("allowed")),
            requested=text("requested"),
            requested6=text("requested6"),
            mac=text("mac"),
        )


NO_META = EndpointMeta()  # an endpoint nothing was recorded of
MetaChange = Callable[[EndpointMeta], EndpointMeta]


@dataclass(frozen=True)
class Allocation:
    """An address held by ``owner`` on a network, with what the edge recorded about it."""

    network_id: str
    owner: str
    address: IPAddress
    meta: EndpointMeta = NO_META


@dataclass(frozen=True)
class Host:
    """A plugstrip host: its id (stable across restarts) and the underlay address other
    hosts send VXLAN to (``--advertise-addr``)."""

    id: str
    address: IPAddress


@dataclass(frozen=True)
class StoreState:
    """What hosts follow of the store (networks, endpoints, live hosts, security groups),
    whole, as of one revision."""

    revision: int
    networks: list[NetworkRecord]
    endpoints: list[Allocation]
    hosts: list[Host]
    groups: list[Group]


Kind = Literal["net", "alloc", "host", "sg"]


@dataclass(frozen=True)
class StoreChange:
    """One record written (``value``) or removed (None) at ``revision``. ``key`` names the
    record: a network's or host's id, a group's name, ``(network id, owner)`` for an
    endpoint."""

    revision: int
    kind: Kind
    key: str | tuple[str, str]
    value: NetworkRecord | Allocation | Host | Group | None


class Store(Protocol):
    # The revision of this object's latest write (0: none yet); a follower that has
    # reached it has seen every write this object made.
    last_written: int

    async def create_network(
        self,
        spec: NetworkSpec,
        pool: IPNetwork = ipam.DEFAULT_RANGE,
        prefix: int = ipam.DEFAULT_PREFIX,
        pool6: IPNetwork = ipam.DEFAULT_RANGE6,
    ) -> NetworkRecord: ...

    async def get_network(self, name_or_id: str) -> NetworkRecord: ...

    async def list_networks(self) -> list[NetworkRecord]: ...

    async def delete_network(self, network_id: str) -> None: ...

    async def allocate(
        self,
        network_id: str,
        owner: str,
        requested: IPAddress | None = None,
        meta: EndpointMeta = NO_META,
    ) -> IPAddress: ...

    async def release(self, network_id: str, owner: str) -> None: ...

    async def allocations(self, network_id: str) -> dict[str, IPAddress]: ...

    async def endpoints(
        self, network_id: str | None = None, owner: str | None = None
    ) -> list[Allocation]: ...

    async def update_meta(self, owner: str, change: MetaChange) -> None:
        """Rewrite the meta of every allocation ``owner`` holds with ``change``."""
        ...

    async def groups(self) -> list[Group]: ...

    async def change_group(self, name: str, change: GroupChange) -> Group | None:
        """Read group ``name`` (None if there is none), give it to ``change``, write what it
        returns (None: remove the group) in one compare-and-swap; ``change`` may raise to
        refuse, and runs again if another writer won meanwhile. Returns what was written."""
        ...

    async def register_host(self, host: Host, ttl: int) -> None:
        """Say ``host`` is alive for the next ``ttl`` seconds: call again before they run
        out. A host not heard of in time is no longer listed by ``hosts``."""
        ...

    async def keep_alive(self, host: Host, ttl: int) -> None:
        """Keep ``host`` listed while this runs (raises when the store is lost; run it
        again): etcd keeps one lease alive on one stream, not a write a heartbeat."""
        ...

    async def deregister_host(self, host_id: str) -> None: ...

    async def hosts(self) -> list[Host]: ...

    def follow(self, since: int | None = None) -> AsyncIterator[StoreState | StoreChange]:
        """The state whole, then every change after it, in revision order. Given
        ``since`` (a revision already seen), the changes after it without the whole first,
        unless the store no longer has them (etcd compacted past it): then the whole
        again, and changes after that. Raises when the store connection is lost."""
        ...

    async def close(self) -> None: ...


def decide_subnets(
    spec: NetworkSpec,
    records: list[NetworkRecord],
    pool: IPNetwork,
    prefix: int,
    pool6: IPNetwork,
) -> tuple[IPNetwork, IPAddress, IPNetwork | None]:
    """A new network's subnet, gateway and (dual-stack) IPv6 subnet, given the networks
    there are: the IPAM decision each backend makes inside its transaction."""
    taken = [r.subnet for r in records]
    if spec.subnet is None:
        subnet = ipam.choose_subnet(taken, pool, prefix)
    else:
        subnet = spec.subnet
        ipam.check_subnet(subnet, taken)
    gateway = spec.gateway or ipam.gateway_of(subnet)
    if not subnet.first < int(gateway) < subnet.last:
        raise Invalid(f"gateway {gateway} is not a host address of {subnet}")
    if not spec.ipv6:
        check_aux(spec, subnet, gateway, None)
        return subnet, gateway, None
    taken6 = [r.subnet6 for r in records if r.subnet6 is not None]
    if spec.subnet6 is None:
        subnet6 = ipam.choose_subnet(taken6, pool6, ipam.DEFAULT_PREFIX6)
    else:
        subnet6 = spec.subnet6
        ipam.check_subnet(subnet6, taken6)
    ipam.check_pair(subnet, gateway, subnet6, spec.gateway6)
    check_aux(spec, subnet, gateway, subnet6)
    return subnet, gateway, subnet6


def check_aux(
    spec: NetworkSpec, subnet: IPNetwork, gateway: IPAddress, subnet6: IPNetwork | None
) -> None:
    """Refuse aux addresses outside the network's subnets, or that are its gateways."""
    for name, address in spec.aux.items():
        within = subnet if address.version == 4 else subnet6
        if within is None or not within.first < int(address) < within.last:
            raise Invalid(f"auxiliary address {name}={address} is not in the network's subnets")
        if address.version == 6 and int(address) - within.first >= subnet.size:
            raise Invalid(
                f"auxiliary address {name}={address}: its host number is beyond IPv4 subnet "
                f"{subnet}, and plugstrip gives an endpoint the same host number in both",
            )
        twin = address if address.version == 4 else ipam.paired(address, within, subnet)
        if twin == gateway:
            raise Invalid(f"auxiliary address {name}={address} is the gateway")


def lowest_free_vni(taken: set[int]) -> int:
    vni = 1
    while vni in taken:
        vni += 1
    if vni > MAX_VNI:
        raise Exhausted("no free VXLAN network identifier")
    return vni


def host_id(state_dir: str | Path) -> str:
    """This host's id: made once, kept in the state directory (the endpoints a host holds
    in a shared store are known by it, across restarts)."""
    path = Path(state_dir) / HOST_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        made = uuid.uuid4().hex
        path.write_text(made + "\n")
        return made


def dump_group(group: Group) -> str:
    return json.dumps(
        [
            {"peer": r.peer, "proto": r.proto, "ports": r.ports, "egress": r.egress}
            for r in group.rules
        ]
    )


def load_group(name: str, text: str | bytes) -> Group:
    return Group(
        name,
        tuple(
            Rule(
                r.get("peer", r.get("source")),  # "source": as plugstrip wrote it before egress
                r["proto"],
                tuple(r["ports"]) if r["ports"] else None,
                r.get("egress", False),
            )
            for r in json.loads(text)
        ),
    )
