"""The state store's contract: its records, the ``Store`` protocol and pure helpers.

Every method that hands something out runs the IPAM decision and its write as one
transaction, so nothing is handed out twice. The backends are modules of their own
(``sqlite_store``, the embedded default for one host; ``etcd_store``, shared by hosts,
with compare-and-swap); ``stores.open_store`` picks one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers import ipam
from plugstrip.netdrivers.ipam import IpamError

T = TypeVar("T")
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


@dataclass(frozen=True)
class Allocation:
    """An address held by ``owner`` on a network, with what the edge recorded about it
    (the container's name and aliases, its interface name: opaque to the store)."""

    network_id: str
    owner: str
    address: IPAddress
    meta: dict[str, Any]


@dataclass(frozen=True)
class Host:
    """A plugstrip host: its id (stable across restarts) and the underlay address other
    hosts send VXLAN to (``--advertise-addr``)."""

    id: str
    address: IPAddress


class Store(Protocol):
    async def create_network(
        self,
        spec: NetworkSpec,
        pool: IPNetwork = ipam.DEFAULT_RANGE,
        prefix: int = ipam.DEFAULT_PREFIX,
    ) -> NetworkRecord: ...

    async def get_network(self, name_or_id: str) -> NetworkRecord: ...

    async def list_networks(self) -> list[NetworkRecord]: ...

    async def delete_network(self, network_id: str) -> None: ...

    async def allocate(
        self,
        network_id: str,
        owner: str,
        requested: IPAddress | None = None,
        meta: dict[str, Any] | None = None,
    ) -> IPAddress: ...

    async def release(self, network_id: str, owner: str) -> None: ...

    async def allocations(self, network_id: str) -> dict[str, IPAddress]: ...

    async def endpoints(
        self, network_id: str | None = None, owner: str | None = None
    ) -> list[Allocation]: ...

    async def update_meta(self, owner: str, changes: dict[str, Any]) -> None: ...

    async def register_host(self, host: Host, ttl: int) -> None:
        """Say ``host`` is alive for the next ``ttl`` seconds: call again before they run
        out. A host not heard of in time is no longer listed by ``hosts``."""
        ...

    async def deregister_host(self, host_id: str) -> None: ...

    async def hosts(self) -> list[Host]: ...

    def changes(self) -> AsyncIterator[None]:
        """Yields after each change to the shared state (by any host); ends or raises
        when the store connection drops."""
        ...

    async def close(self) -> None: ...


def lowest_free_vni(taken: set[int]) -> int:
    vni = 1
    while vni in taken:
        vni += 1
    if vni > MAX_VNI:
        raise IpamError("exhausted", "no free VXLAN network identifier")
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
