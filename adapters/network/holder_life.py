"""The owners of endpoints on this host, behind one small class: holders, and containers
plugged in their own namespace (``docker network connect`` of a container made without a
holder). Their locks, namespaces and life.

Every change to an owner (wiring it, re-plugging it, discarding it, releasing what it
held) takes the owner's lock, so a create, a connect, an event and a reconciliation never
interleave on one namespace. Releases the store refuses while it is away are retried until
it is back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

from netaddr import AddrFormatError, IPAddress

from plugstrip.adapters.network import holder, resolv_conf
from plugstrip.adapters.network.holder_pool import HolderPool
from plugstrip.netdrivers.control import dns
from plugstrip.netdrivers.control.dns import NameServer, Upstreams
from plugstrip.netdrivers.control.service import Attachment, NetworkService
from plugstrip.netdrivers.domain import ipam
from plugstrip.netdrivers.stores.store import EndpointMeta, NetworkRecord
from plugstrip.proxy.contract import Refuse
from plugstrip.proxy.docker_api import DockerApi

log = logging.getLogger("plugstrip.network")

RELEASE_RETRY = 2.0  # seconds between tries to release while the store is away


@dataclass(frozen=True)
class HolderNs:
    netns: str  # /proc/PID/ns/net
    upstreams: Upstreams


class Holders:
    def __init__(self, service: NetworkService, api: DockerApi, spares: int) -> None:
        self.service = service
        self.api = api
        self.pool = HolderPool(api, spares)
        self.names = NameServer(service.resolve)
        self._locks: dict[str, asyncio.Lock] = {}  # per holder: plug, replug, discard
        self.pending: set[str] = set()  # holders whose container is being created
        self._unreleased: set[str] = set()  # holders gone whose release the store refused
        self._releasing: asyncio.Task[None] | None = None
        self._bridge: bool | None = None  # does the daemon have its default bridge?
        # Containers here holding endpoints in their own namespace, as far as this process
        # knows (the store says for certain; reconciliation sets it): the hot paths'
        # filter (inspects, lists, events), so calls about other containers cost nothing.
        self.own: set[str] = set()
        # Whether this daemon may have containers of plugstrip's (holders, or containers
        # joined to one): until the first reconcile says otherwise, assume so.
        self.holding = True

    async def close(self) -> None:
        if self._releasing is not None:
            self._releasing.cancel()
            await asyncio.gather(self._releasing, return_exceptions=True)
        await self.pool.close()
        self.names.close()

    def lock(self, hid: str) -> asyncio.Lock:
        return self._locks.setdefault(hid, asyncio.Lock())

    # ---- making and finding ------------------------------------------------------------

    async def create(self, request: dict[str, Any]) -> str:
        """A holder for ``request`` (a running spare if it asks nothing special), marked
        pending until its container is created."""
        self.holding = True  # before the holder exists: a list from now on may show it
        hid = await self._spare() if request == holder.plain_request(True) else None
        if hid is None:
            await holder.ensure_image(self.api)
            created = await self.api.call(
                "POST", "/containers/create", request, params={"name": holder.new_name()}
            )
            hid = str(created["Id"])
        self.pending.add(hid)
        return hid

    async def _spare(self) -> str | None:
        """A running spare holder from the pool; None if there is none (or it died)."""
        hid = self.pool.take()
        if hid is not None:
            info = await self.api.inspect_container(hid)
            if info is None or not info["State"]["Running"]:
                await self.discard(hid)
                return None
        return hid

    def created(self, hid: str) -> None:
        """The create that made ``hid`` is over (its container made or not)."""
        self.pending.discard(hid)

    async def top_up_spares(self) -> None:
        """Spares only where they serve: plugstrip networks exist, and so does the bridge
        they sit on."""
        if await self.service.networks() and await self.has_bridge():
            self.holding = True
            self.pool.top_up()

    async def has_bridge(self) -> bool:
        if self._bridge is None:
            self._bridge = (
                await self.api.call("GET", "/networks/bridge", ok_missing=True) is not None
            )
        return self._bridge

    async def namespace(self, hid: str) -> HolderNs:
        """The holder's namespace (starting the holder if it is stopped)."""
        info = await self.api.inspect_container(hid)
        if info is None:
            raise Refuse(409, f"network holder {hid[:12]} is gone")
        if not info["State"]["Running"]:
            await self.api.call("POST", f"/containers/{hid}/start")
            info = await self.api.inspect_container(hid) or info
        outbound = info["HostConfig"]["NetworkMode"] != "none"  # on a Docker network
        user_dns = (info["Config"].get("Labels") or {}).get(holder.DNS) or ""
        servers = tuple(s for s in user_dns.split(",") if s) or dns.host_resolvers()
        return HolderNs(netns_of(info), Upstreams(servers, outbound))

    # ---- wiring ------------------------------------------------------------------------

    async def attach(
        self,
        owner: str,
        netns: str | None,
        record: NetworkRecord,
        config: dict[str, Any],
        container: dict[str, Any] | None = None,
        name: str = "",
        mac: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> Attachment:
        """Put ``owner`` (a holder, or a container itself) on ``record`` as Docker's
        endpoint ``config`` asks (its ``IPAMConfig`` and ``Aliases``), for ``container``
        (an inspect) or a new one (whose ``labels`` are given); plugged into ``netns``
        now, or (None) when it starts. Its security groups are the container's label's,
        else the network's."""
        ipam_config = config.get("IPAMConfig") or {}
        requested_text = ipam_config.get("IPv4Address") or None
        requested6_text = ipam_config.get("IPv6Address") or None
        requested = _address(requested_text, 4)
        requested6 = _address(requested6_text, 6)
        if requested6 is not None:
            if record.subnet6 is None:
                raise Refuse(400, f"network {record.name} has no IPv6: no --ip6 on it")
            requested = ipam.requested_pair(record.subnet, record.subnet6, requested, requested6)
        if container is not None:
            labels = container["Config"].get("Labels") or {}
        groups = holder.listed((labels or {}).get(holder.SECURITY_GROUPS)) or holder.listed(
            record.options.get(holder.NETWORK_GROUPS)
        )
        await self.service.check_groups(groups)
        allowed = _allowed(record, (labels or {}).get(holder.ALLOWED_ADDRESSES))
        if container is not None:
            name = container["Name"].lstrip("/")
        meta = EndpointMeta(
            container=container["Id"] if container is not None else None,
            name=name,
            aliases=tuple(str(a) for a in config.get("Aliases") or []),
            groups=tuple(groups),
            allowed=tuple(allowed),
            requested=requested_text,
            requested6=requested6_text,
            mac=mac,
        )
        self.holding = True
        if container is not None and owner == container["Id"]:
            self.own.add(owner)
        return await self.service.attach(record, owner, netns, requested, meta)

    async def serve_names(self, hid: str, ns: HolderNs) -> None:
        await self.names.serve(hid, ns.netns, ns.upstreams)

    async def replug(self, hid: str) -> None:
        """Wire a holder's namespace again (it was re-made, or plugstrip restarted).
        The caller holds the holder's lock."""
        ns = await self.namespace(hid)
        await self.service.replug(hid, ns.netns)
        await self.serve_names(hid, ns)

    # ---- containers in their own namespace -------------------------------------------

    async def owns(self, cid: str) -> bool:
        """Whether the container ``cid`` holds endpoints itself (no holder): the store's
        answer, for the calls that may be about one."""
        return cid in self.own and bool(await self.service.attachments(owner=cid))

    def may_show_own(self, body: bytes) -> bool:
        """Whether a daemon's answer may be about a container in its own namespace."""
        return any(cid.encode() in body for cid in self.own)

    async def plug_own(self, info: dict[str, Any]) -> None:
        """Plug a running container's endpoints into its (maybe new) namespace and answer
        its names there. The caller holds the container's lock."""
        netns = netns_of(info)
        await self.service.replug(info["Id"], netns)
        servers = await asyncio.to_thread(resolv_conf.rewrite, info["State"]["Pid"], dns.ADDRESS)
        await self.names.serve(info["Id"], netns, Upstreams(servers, True, netns))

    async def unplugged_own(self, info: dict[str, Any]) -> None:
        """After a container's last endpoint left: its resolvers back as they were."""
        self.own.discard(info["Id"])
        self.names.stop(info["Id"])
        if info["State"]["Running"]:
            await asyncio.to_thread(resolv_conf.rewrite, info["State"]["Pid"], None)

    # ---- ending ------------------------------------------------------------------------

    async def discard(self, hid: str) -> None:
        """Remove the holder and release what it held (later, if the store is away)."""
        async with self.lock(hid):
            await self.api.call(
                "DELETE", f"/containers/{hid}", params={"force": "1"}, ok_missing=True
            )
            self.names.stop(hid)
            try:
                await self.service.release_owner(hid)
            except ConnectionError as exc:  # the store is away: the container is gone anyway
                log.warning("releasing %s later: %s", hid[:12], exc)
                self._unreleased.add(hid)
                if self._releasing is None or self._releasing.done():
                    self._releasing = asyncio.create_task(self._release_later())
        self._locks.pop(hid, None)
        self.pending.discard(hid)

    async def release(self, owner: str) -> None:
        """Release what ``owner`` (a holder or a container that is gone) held."""
        async with self.lock(owner):
            self.names.stop(owner)
            await self.service.release_owner(owner)
        self.own.discard(owner)
        self._locks.pop(owner, None)

    async def _release_later(self) -> None:
        """Release what holders removed while the store was away held, once it is back."""
        while self._unreleased:
            await asyncio.sleep(RELEASE_RETRY)
            for hid in sorted(self._unreleased):
                try:
                    await self.release(hid)
                except ConnectionError:
                    break
                self._unreleased.discard(hid)
                log.info("released what %s held", hid[:12])


def netns_of(info: dict[str, Any]) -> str:
    """The network namespace of a running container (an inspect)."""
    return f"/proc/{int(info['State']['Pid'])}/ns/net"


def _address(text: str | None, version: Literal[4, 6]) -> IPAddress | None:
    if not text:
        return None
    try:
        return IPAddress(text, version)
    except (AddrFormatError, ValueError):
        raise Refuse(400, f"invalid IPv{version} address: {text}") from None


def _allowed(record: NetworkRecord, text: str | None) -> list[IPAddress]:
    """The allowed addresses a label names that are on ``record`` (others are for the
    container's other networks), each one of its aux addresses: reserved, so IPAM never
    gives it to another endpoint as its own."""
    out = []
    for each in holder.listed(text):
        try:
            address = IPAddress(each)
        except (AddrFormatError, ValueError):
            raise Refuse(400, f"invalid allowed address {each!r}") from None
        subnet = record.subnet if address.version == 4 else record.subnet6
        if subnet is None or address not in subnet:
            continue
        if address not in record.aux.values():
            raise Refuse(
                400,
                f"allowed address {address} is not reserved on network {record.name}: "
                f"create it with --aux-address NAME={address}",
            )
        out.append(address)
    return out
