"""The built-in network adapter: plugstrip networks through the unchanged Docker API.

It answers the network calls for plugstrip's own drivers itself (``call.respond``), adds
plugstrip networks to Docker's answers (lists, inspects), and turns a container create on
a plugstrip network into a network-holder container wired up first plus the user's
container joining it (see :mod:`.holder`). Docker-API shapes stop here: the control
plane below (:class:`plugstrip.netdrivers.service.NetworkService`) takes plain typed intent.

Address life follows the daemon: addresses belong to a holder, which lives as long as its
container; removals made anywhere (``docker rm``, ``--rm``, directly on the daemon) arrive
on the event stream, and on start-up (and after the stream drops) a reconciliation frees
what belongs to no container and re-plugs holders the daemon restarted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

from netaddr import AddrFormatError, IPAddress

from plugstrip.adapters.network import holder as holders
from plugstrip.adapters.network import shapes, weave_cidr
from plugstrip.adapters.network.holder_pool import DEFAULT_SIZE, HolderPool
from plugstrip.netdrivers import dns, ipam
from plugstrip.netdrivers.dns import NameServer, Upstreams
from plugstrip.netdrivers.ipam import IpamError
from plugstrip.netdrivers.mesh import Mesh
from plugstrip.netdrivers.service import Attachment, NetworkService
from plugstrip.netdrivers.store import NetworkRecord, NetworkSpec
from plugstrip.proxy.contract import OWNER_KEY, OWNER_LABEL, Call, Refuse, split_version
from plugstrip.proxy.docker_api import DockerApi
from plugstrip.proxy.pipeline import BuiltIn, HookPolicy, LoadedAdapter
from plugstrip.proxy.routes import Route

log = logging.getLogger("plugstrip.network")

PREFIX = "plugstrip/"
DEFAULT_WEAVE_NETWORK = "weave"  # where WEAVE_CIDR's net:default lands, as in Weave
RELEASE_RETRY = 2.0  # seconds between tries to release while the store is away

# What each hook handles: a method, a path (``*``: one segment, a name or an id, handed to
# the handler) and the handler's name. The pipeline's routes are made from the same lines.
_PRE = (
    ("POST", "/networks/create", "_create_network"),
    ("GET", "/networks/*", "_inspect_network"),
    ("DELETE", "/networks/*", "_remove_network"),
    ("POST", "/networks/*/connect", "_connect"),
    ("POST", "/networks/*/disconnect", "_disconnect"),
    ("POST", "/containers/create", "_create_container"),
    ("POST", "/containers/*/start", "_start"),
    ("POST", "/containers/*/restart", "_start"),
    ("DELETE", "/containers/*", "_before_remove"),
)
_POST = (
    ("GET", "/networks", "_list_networks"),
    ("POST", "/networks/prune", "_prune_networks"),
    ("POST", "/containers/create", "_created"),
    ("GET", "/containers/json", "_list_containers"),
    ("GET", "/containers/*/json", "_inspect_container"),
    ("DELETE", "/containers/*", "_removed"),
)
ROUTES = tuple(
    Route.parse(text) for text in dict.fromkeys(f"{m} {p}" for m, p, _ in (*_PRE, *_POST))
)


def _path_pattern(path: str) -> re.Pattern[str]:
    return re.compile(re.escape(path).replace(r"\*", "([^/]+)"))


_STATUS = {"invalid": 400, "conflict": 409, "exhausted": 409, "not_found": 404}
_DOCKER_MODES = {"", "default", "bridge", "host", "none"}


@dataclass(frozen=True)
class HolderNs:
    netns: str  # /proc/PID/ns/net
    on_bridge: bool  # on Docker's bridge too: plugstrip's interfaces start at eth1
    upstreams: Upstreams


Handler = Callable[[Call, re.Match[str]], Awaitable[None]]


def refusal(exc: IpamError) -> Refuse:
    return Refuse(_STATUS[exc.category], str(exc))


class NetworkAdapter:
    def __init__(
        self,
        service: NetworkService,
        api: DockerApi,
        spare_holders: int = DEFAULT_SIZE,
        mesh: Mesh | None = None,
    ) -> None:
        self.service = service
        self.api = api
        self.mesh = mesh  # with other hosts: tunnels to them
        self.pool = HolderPool(api, spare_holders)
        self._locks: dict[str, asyncio.Lock] = {}  # per holder: plug, replug, discard
        self._pending: set[str] = set()  # holders whose container is being created
        self._bridge: bool | None = None  # does the daemon have its default bridge?
        self._events: asyncio.Task[None] | None = None
        self._unreleased: set[str] = set()  # holders gone whose release the store refused
        self._releasing: asyncio.Task[None] | None = None
        # Whether this daemon may have containers of plugstrip's (holders, or containers
        # joined to one): until the first reconcile says otherwise, assume so.
        self._holding = True
        self.names = NameServer(service.resolve)
        self._pre = self._table(_PRE)
        self._post = self._table(_POST)

    def _table(
        self, lines: tuple[tuple[str, str, str], ...]
    ) -> list[tuple[str, re.Pattern[str], Handler]]:
        return [(m, _path_pattern(p), getattr(self, h)) for m, p, h in lines]

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Before plugstrip serves: remove datapath leftovers of a crash (nothing can be
        half-way through a create yet), then follow the daemon."""
        try:
            removed = await self.service.prune()
        except Exception as exc:
            log.warning("leftovers not pruned: %s", exc)
        else:
            if removed:
                log.info("removed leftovers: %s", ", ".join(removed))
        self._events = asyncio.create_task(self._follow_events())
        if self.mesh is not None:
            self.mesh.start()

    async def close(self) -> None:
        for task in (self._events, self._releasing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.mesh is not None:
            await self.mesh.close()
        await self.pool.close()
        self.names.close()
        await self.api.close()

    # ---- dispatch ------------------------------------------------------------------------

    def wants(self, method: str, path: str) -> bool:
        """Container lists and inspects, which dashboards poll, are none of this adapter's
        business while the daemon has no container of plugstrip's: they pass through as
        if plugstrip had no networks."""
        if self._holding or method != "GET":
            return True
        return not split_version(path)[1].startswith("/containers/")

    async def pre_hook(self, call: Call) -> None:
        await self._dispatch(self._pre, call)

    async def post_hook(self, call: Call) -> None:
        await self._dispatch(self._post, call)

    async def _dispatch(
        self, table: list[tuple[str, re.Pattern[str], Handler]], call: Call
    ) -> None:
        _, path = split_version(call.client_request.path)
        for method, pattern, handler in table:
            match = pattern.fullmatch(path)
            if match and call.client_request.method.upper() == method:
                try:
                    await handler(call, match)
                except IpamError as exc:
                    raise refusal(exc) from None
                except ConnectionError as exc:  # a datapath backend (OVSDB) is unreachable
                    raise Refuse(503, str(exc)) from None
                return

    # ---- networks ------------------------------------------------------------------------

    async def _create_network(self, call: Call, _: re.Match[str]) -> None:
        body = call.request.json() or {}
        name, driver = str(body.get("Name") or ""), str(body.get("Driver") or "")
        if not driver.startswith(PREFIX):
            mine = await self.service.find(name) if name else None
            if mine is not None and mine.name == name:
                raise Refuse(409, f"network with name {name} already exists")
            return
        spec = self._network_spec(body)
        self.service.driver(spec.driver)  # an unknown driver is refused before any lookup
        docker_own = await self.api.call(
            "GET", f"/networks/{quote(name, safe='')}", ok_missing=True
        )
        if docker_own is not None and docker_own.get("Name") == name:
            raise Refuse(409, f"network with name {name} already exists")
        record = await self.service.create_network(spec)
        log.info("network created", extra={"network": name, "subnet": str(record.subnet)})
        await self._top_up_spares()
        call.respond(201, {"Id": record.id, "Warning": ""})

    @staticmethod
    def _network_spec(body: dict[str, Any]) -> NetworkSpec:
        name, driver = str(body.get("Name") or ""), str(body["Driver"])
        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name):
            raise Refuse(400, f"invalid network name {name!r}")
        for flag, what in (
            ("EnableIPv6", "IPv6"),
            ("Ingress", "ingress networks"),
            ("ConfigOnly", "config-only networks"),
        ):
            if body.get(flag):
                raise Refuse(400, f"{driver} does not support {what}")
        if (body.get("ConfigFrom") or {}).get("Network"):
            raise Refuse(400, f"{driver} does not support --config-from")
        if body.get("Options"):
            unknown = ", ".join(sorted(body["Options"]))
            raise Refuse(400, f"{driver} takes no driver options (got: {unknown})")
        ipam_body = body.get("IPAM") or {}
        if (ipam_body.get("Driver") or "default") != "default" or ipam_body.get("Options"):
            raise Refuse(400, f"{driver} has its own IPAM: no --ipam-driver or --ipam-opt")
        configs = ipam_body.get("Config") or []
        if len(configs) > 1:
            raise Refuse(400, f"{driver} takes one --subnet")
        config = configs[0] if configs else {}
        for key, flag in (("IPRange", "--ip-range"), ("AuxiliaryAddresses", "--aux-address")):
            if config.get(key):
                raise Refuse(400, f"{driver} does not support {flag}")
        subnet = ipam.parse_subnet(config["Subnet"]) if config.get("Subnet") else None
        gateway = None
        if config.get("Gateway"):
            if subnet is None:
                raise Refuse(400, "--gateway needs --subnet")
            try:
                gateway = IPAddress(config["Gateway"], 4)
            except (AddrFormatError, ValueError):
                raise Refuse(400, f"invalid gateway {config['Gateway']!r}") from None
        return NetworkSpec(
            name,
            driver,
            subnet,
            gateway,
            {},
            {str(k): str(v) for k, v in (body.get("Labels") or {}).items()},
            bool(body.get("Internal")),
        )

    async def _network(self, call: Call, name: str) -> NetworkRecord | None:
        """The plugstrip network ``name``, if there is one this call may see (with a
        policy's ownership, another client's answers as absent, as Docker's do)."""
        record = await self.service.find(name)
        owner = call.context.get(OWNER_KEY)
        if record is not None and owner is not None and record.labels.get(OWNER_LABEL) != owner:
            raise Refuse(404, f"network {name} not found")
        return record

    async def _inspect_network(self, call: Call, match: re.Match[str]) -> None:
        record = await self._network(call, match.group(1))
        if record is not None:
            attachments = await self.service.attachments(network=record)
            call.respond(200, shapes.network(record, attachments))

    async def _remove_network(self, call: Call, match: re.Match[str]) -> None:
        record = await self._network(call, match.group(1))
        if record is None:
            return
        if await self._in_use(record):
            raise Refuse(
                403,
                f"error while removing network: network {record.name} id {record.id} "
                "has active endpoints",
            )
        await self.service.delete_network(record)
        log.info("network removed", extra={"network": record.name})
        call.respond(204, body=b"", content_type="text/plain")

    async def _in_use(self, record: NetworkRecord) -> bool:
        """Whether containers are on the network. A holder whose container is gone but
        whose destroy event is not handled yet (``run --rm`` returns as the daemon removes
        the container) is discarded here, so ``network rm`` right after works as on
        Docker's own networks."""
        attachments = await self.service.attachments(network=record)
        for a in attachments:
            if not self.service.is_local(a) or a.owner in self._pending:
                continue
            users = json.dumps({"label": [f"{holders.HOLDER}={a.owner}"]})
            if not await self.api.call(
                "GET", "/containers/json", params={"all": "1", "filters": users}
            ):
                await self._discard_holder(a.owner)
        return bool(await self.service.attachments(network=record))

    async def _list_networks(self, call: Call, _: re.Match[str]) -> None:
        response = call.response
        if response is None or response.status != 200:
            return
        filters = _filters(call)
        records, every = await self.service.snapshot()
        in_use = {a.network.id for a in every}
        listed = response.json()
        for record in records:
            if shapes.matches(record, filters, record.id in in_use):
                listed.append(shapes.network(record, []))

    async def _prune_networks(self, call: Call, _: re.Match[str]) -> None:
        response = call.response
        if response is None or response.status != 200:
            return
        filters = _filters(call)
        records, every = await self.service.snapshot()
        in_use = {a.network.id for a in every}
        pruned = []
        for record in records:
            if record.id not in in_use and shapes.matches(record, filters, False):
                await self.service.delete_network(record)
                pruned.append(record.name)
        if pruned:
            result = response.json() or {}
            result["NetworksDeleted"] = [*(result.get("NetworksDeleted") or []), *pruned]
            response.set_json(result)

    async def _connect(self, call: Call, match: re.Match[str]) -> None:
        record = await self._network(call, match.group(1))
        if record is None:
            return
        body = call.request.json() or {}
        info = await self._container(str(body.get("Container") or ""))
        hid = self._holder_of(info, record)
        config = body.get("EndpointConfig") or {}
        async with self._lock(hid):
            if any(a.network.id == record.id for a in await self.service.attachments(hid)):
                raise Refuse(
                    403,
                    f"endpoint with name {info['Name'].lstrip('/')} already exists "
                    f"in network {record.name}",
                )
            ns = await self._holder(hid)
            await self._attach(hid, ns.netns, ns.on_bridge, record, config, info)
        call.respond(200, body=b"", content_type="text/plain")

    async def _disconnect(self, call: Call, match: re.Match[str]) -> None:
        record = await self._network(call, match.group(1))
        if record is None:
            return
        body = call.request.json() or {}
        info = await self._container(str(body.get("Container") or ""))
        hid = self._holder_of(info, record)
        async with self._lock(hid):
            if not await self.service.detach(record, hid):
                raise Refuse(
                    403,
                    f"container {info['Id']} is not connected to network {record.name}",
                )
        call.respond(200, body=b"", content_type="text/plain")

    async def _container(self, name_or_id: str) -> dict[str, Any]:
        info = await self.api.inspect_container(name_or_id) if name_or_id else None
        if info is None:
            raise Refuse(404, f"No such container: {name_or_id}")
        return info

    @staticmethod
    def _holder_of(info: dict[str, Any], record: NetworkRecord) -> str:
        hid = (info["Config"].get("Labels") or {}).get(holders.HOLDER)
        if not hid:
            raise Refuse(
                400,
                f"container {info['Name'].lstrip('/')} was not created on a plugstrip network, "
                f"so it cannot join {record.name}: create it with --network {record.name}",
            )
        return str(hid)

    # ---- containers ----------------------------------------------------------------------

    async def _create_container(self, call: Call, _: re.Match[str]) -> None:
        body = call.request.json()
        if not isinstance(body, dict):
            return
        wanted = await self._wanted_networks(body)
        if not wanted:
            return
        self._holding = True  # before the holder exists: a list from now on may show it
        mode = str((body.get("HostConfig") or {}).get("NetworkMode") or "")
        shown_mode = mode if mode not in _DOCKER_MODES else wanted[0][0].name
        on_bridge = any(not r.internal for r, _ in wanted) and await self._has_bridge()
        mac = body.pop("MacAddress", None)
        holder_body = holders.split_request(body, shown_mode, on_bridge)
        name = _query(call, "name") or ""
        hid = await self._spare() if holder_body == holders.plain_request(True) else None
        if hid is None:
            await holders.ensure_image(self.api)
            created = await self.api.call(
                "POST", "/containers/create", holder_body, params={"name": holders.new_name()}
            )
            hid = str(created["Id"])
        self._pending.add(hid)
        call.context["holder"] = hid
        try:
            async with self._lock(hid):
                ns = await self._holder(hid)  # starts it, unless it is a running spare
                for index, (record, config) in enumerate(wanted):
                    extra = {"mac": mac} if mac and index == 0 else {}
                    await self._attach(hid, ns.netns, on_bridge, record, config, None, name, extra)
                await self.names.serve(hid, ns.netns, ns.upstreams)
        except BaseException:
            await self._discard_holder(hid)
            raise
        holders.join(body, hid)

    async def _spare(self) -> str | None:
        """A running spare holder from the pool; None if there is none (or it died)."""
        hid = self.pool.take()
        if hid is not None:
            info = await self.api.inspect_container(hid)
            if info is None or not info["State"]["Running"]:
                await self._discard_holder(hid)
                return None
        return hid

    async def _wanted_networks(
        self, body: dict[str, Any]
    ) -> list[tuple[NetworkRecord, dict[str, Any]]]:
        """The plugstrip networks a create request asks for, each with its endpoint config:
        from the network mode, the endpoints config, and Weave's WEAVE_CIDR."""
        mode = str((body.get("HostConfig") or {}).get("NetworkMode") or "")
        configs = dict((body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {})
        wanted: list[tuple[NetworkRecord, dict[str, Any]]] = []
        mode_record = None
        if mode not in _DOCKER_MODES and not mode.startswith("container:"):
            mode_record = await self.service.find(mode)
            if mode_record is not None:
                wanted.append((mode_record, configs.pop(mode, None) or {}))
        for key, config in configs.items():
            if key in _DOCKER_MODES:  # newer clients name the mode here too
                continue
            record = await self.service.find(key)
            if record is not None and mode_record is not None and record.id != mode_record.id:
                wanted.append((record, config or {}))
            elif record is not None and mode_record is None:
                raise Refuse(
                    400, f"plugstrip network {record.name} must be the container's --network"
                )
            elif record is None and mode_record is not None:
                raise Refuse(
                    400,
                    f"a container on plugstrip network {mode_record.name} cannot also join "
                    f"Docker network {key}",
                )
        cidr = next(
            (e.split("=", 1)[1] for e in body.get("Env") or [] if e.startswith("WEAVE_CIDR=")),
            None,
        )
        if cidr is not None:
            if mode not in _DOCKER_MODES and mode_record is None:
                return wanted
            wanted += await self._weave_cidr_networks(cidr, {r.id for r, _ in wanted})
        return wanted

    async def _weave_cidr_networks(
        self, text: str, taken: set[str]
    ) -> list[tuple[NetworkRecord, dict[str, Any]]]:
        try:
            requests = weave_cidr.parse(text)
        except weave_cidr.WeaveCidrError as exc:
            raise Refuse(400, str(exc)) from None
        out = []
        for req in requests:
            if req.kind == "default":
                name, subnet = DEFAULT_WEAVE_NETWORK, None
            else:
                assert req.subnet is not None
                name, subnet = f"weave-{req.subnet.network}-{req.subnet.prefixlen}", req.subnet
            record = await self._network_for_subnet(name, subnet)
            if record.id in taken:
                raise Refuse(400, f"WEAVE_CIDR {text!r}: network {record.name} is named twice")
            config = {"IPAMConfig": {"IPv4Address": str(req.address)}} if req.address else {}
            out.append((record, config))
        return out

    async def _network_for_subnet(self, name: str, subnet: Any) -> NetworkRecord:
        """The plugstrip network with exactly ``subnet`` (or named ``name`` for the default),
        made on first use as Weave made its subnets."""
        for record in await self.service.store.list_networks():
            if (subnet is None and record.name == name) or (
                subnet is not None and record.subnet == subnet
            ):
                return record
        spec = NetworkSpec(name, "plugstrip/weave", subnet)
        try:
            return await self.service.create_network(spec)
        except IpamError as exc:
            if exc.category != "conflict":
                raise
            found = await self.service.find(name)  # made meanwhile by a concurrent create
            if found is None:
                raise
            return found

    async def _attach(
        self,
        hid: str,
        netns: str,
        on_bridge: bool,
        record: NetworkRecord,
        config: dict[str, Any],
        info: dict[str, Any] | None,
        name: str = "",
        extra: dict[str, Any] | None = None,
    ) -> Attachment:
        requested_text = (config.get("IPAMConfig") or {}).get("IPv4Address") or None
        requested = None
        if requested_text:
            try:
                requested = IPAddress(requested_text, 4)
            except (AddrFormatError, ValueError):
                raise Refuse(400, f"invalid IPv4 address {requested_text!r}") from None
        meta: dict[str, Any] = {
            "aliases": [str(a) for a in config.get("Aliases") or []],
            "requested": requested_text,
            **(extra or {}),
        }
        if info is not None:
            meta |= {"container": info["Id"], "name": info["Name"].lstrip("/")}
        elif name:
            meta["name"] = name
        return await self.service.attach(
            record, hid, netns, requested, meta, first_ifindex=1 if on_bridge else 0
        )

    async def _created(self, call: Call, _: re.Match[str]) -> None:
        hid = call.context.get("holder")
        response = call.response
        if hid is None or response is None:
            return
        try:
            if response.status != 201:
                await self._discard_holder(hid)
                return
            cid = str(response.json()["Id"])
            name = _query(call, "name")
            if not name:
                info = await self._container(cid)
                name = info["Name"].lstrip("/")
            await self.service.store.update_meta(hid, {"container": cid, "name": name})
        finally:
            self._pending.discard(hid)

    async def _start(self, call: Call, match: re.Match[str]) -> None:
        info = await self.api.inspect_container(match.group(1))
        hid = ((info or {}).get("Config", {}).get("Labels") or {}).get(holders.HOLDER)
        if not hid:
            return
        async with self._lock(hid):
            held = await self.api.inspect_container(hid)
            if held is None:
                raise Refuse(
                    409,
                    f"the network holder of {info['Name'].lstrip('/')} is gone "  # type: ignore[index]
                    "(removed on the daemon): remove the container and create it again",
                )
            if not held["State"]["Running"]:
                await self._replug(hid)

    async def _before_remove(self, call: Call, match: re.Match[str]) -> None:
        info = await self.api.inspect_container(match.group(1))
        hid = ((info or {}).get("Config", {}).get("Labels") or {}).get(holders.HOLDER)
        if hid:
            call.context["holder"] = hid

    async def _removed(self, call: Call, _: re.Match[str]) -> None:
        hid = call.context.get("holder")
        if hid and call.response is not None and call.response.status < 300:
            await self._discard_holder(hid)

    async def _inspect_container(self, call: Call, _: re.Match[str]) -> None:
        response = call.response
        if response is None or response.status != 200:
            return
        if holders.HOLDER.encode() not in (response.body or b""):
            return  # not joined to a holder: left as the daemon sent it, unparsed
        data = response.json()
        labels = (data.get("Config") or {}).get("Labels") or {}
        hid = labels.get(holders.HOLDER)
        if not hid:
            return
        held = await self.api.inspect_container(hid) or {}
        settings = data.setdefault("NetworkSettings", {})
        settings["Networks"] = {
            a.network.name: shapes.container_endpoint(a, data["Id"])
            for a in await self.service.attachments(hid)
        }
        settings["Ports"] = (held.get("NetworkSettings") or {}).get("Ports") or {}
        for key in ("IPAddress", "Gateway", "MacAddress"):
            if key in settings:
                settings[key] = ""
        host_config = data.setdefault("HostConfig", {})
        host_config["NetworkMode"] = labels.get(
            holders.NETWORK_MODE, host_config.get("NetworkMode")
        )
        for key, value in (held.get("HostConfig") or {}).items():
            if key in holders.MOVED_HOST_CONFIG:
                host_config[key] = value
        user_dns = ((held.get("Config") or {}).get("Labels") or {}).get(holders.DNS)
        host_config["Dns"] = [s for s in (user_dns or "").split(",") if s]
        for key, value in (held.get("Config") or {}).items():
            if key in holders.MOVED_CONFIG:
                data["Config"][key] = value

    async def _list_containers(self, call: Call, _: re.Match[str]) -> None:
        response = call.response
        if response is None or response.status != 200:
            return
        if holders.LABEL_PREFIX.encode() not in (response.body or b""):
            return  # none of plugstrip's containers: left as the daemon sent it, unparsed
        listed = response.json()
        held = {c["Id"]: c for c in listed if (c.get("Labels") or {}).get(holders.ROLE)}
        if not held and not any((c.get("Labels") or {}).get(holders.HOLDER) for c in listed):
            return
        by_owner: dict[str, list[Attachment]] = {}
        for a in await self.service.attachments():
            by_owner.setdefault(a.owner, []).append(a)
        out = []
        for c in listed:
            labels = c.get("Labels") or {}
            if labels.get(holders.ROLE):
                continue
            hid = labels.get(holders.HOLDER)
            if hid:
                c.setdefault("HostConfig", {})["NetworkMode"] = labels.get(holders.NETWORK_MODE)
                c.setdefault("NetworkSettings", {})["Networks"] = {
                    a.network.name: shapes.container_endpoint(a, c["Id"])
                    for a in by_owner.get(hid, [])
                }
                if hid in held:
                    c["Ports"] = held[hid].get("Ports") or []
            out.append(c)
        response.set_json(out)

    # ---- holders -------------------------------------------------------------------------

    def _lock(self, hid: str) -> asyncio.Lock:
        return self._locks.setdefault(hid, asyncio.Lock())

    async def _top_up_spares(self) -> None:
        """Spares only where they serve: plugstrip networks exist, and so does the bridge
        they sit on."""
        if await self.service.store.list_networks() and await self._has_bridge():
            self._holding = True
            self.pool.top_up()

    async def _has_bridge(self) -> bool:
        if self._bridge is None:
            self._bridge = (
                await self.api.call("GET", "/networks/bridge", ok_missing=True) is not None
            )
        return self._bridge

    async def _holder(self, hid: str) -> HolderNs:
        """The holder's namespace (starting the holder if it is stopped)."""
        info = await self.api.inspect_container(hid)
        if info is None:
            raise Refuse(409, f"network holder {hid[:12]} is gone")
        if not info["State"]["Running"]:
            await self.api.call("POST", f"/containers/{hid}/start")
            info = await self.api.inspect_container(hid) or info
        on_bridge = info["HostConfig"]["NetworkMode"] != "none"
        user_dns = (info["Config"].get("Labels") or {}).get(holders.DNS) or ""
        servers = tuple(s for s in user_dns.split(",") if s) or dns.host_resolvers()
        return HolderNs(
            f"/proc/{int(info['State']['Pid'])}/ns/net", on_bridge, Upstreams(servers, on_bridge)
        )

    async def _replug(self, hid: str) -> None:
        """Wire a holder's namespace again (it was re-made, or plugstrip restarted)."""
        ns = await self._holder(hid)
        await self.service.replug(hid, ns.netns)
        await self.names.serve(hid, ns.netns, ns.upstreams)

    async def _discard_holder(self, hid: str) -> None:
        async with self._lock(hid):
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
        self._pending.discard(hid)

    async def _release_later(self) -> None:
        """Release what holders removed while the store was away held, once it is back."""
        while self._unreleased:
            await asyncio.sleep(RELEASE_RETRY)
            for hid in sorted(self._unreleased):
                try:
                    async with self._lock(hid):
                        await self.service.release_owner(hid)
                except ConnectionError:
                    break
                self._unreleased.discard(hid)
                log.info("released what %s held", hid[:12])

    # ---- following the daemon ------------------------------------------------------------

    async def _follow_events(self) -> None:
        """Reconcile, then follow container events from that moment; again when the stream
        drops (the daemon restarted, the connection broke)."""
        while True:
            since = time.time()
            try:
                await self.reconcile()
                async for event in self.api.events(
                    {"type": ["container"], "event": ["destroy", "start"]}, since
                ):
                    await self._on_event(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event stream dropped, following again: %s", exc)
            await asyncio.sleep(1)

    async def _on_event(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        cid, attrs = str(actor.get("ID", "")), actor.get("Attributes") or {}
        action = event.get("Action")
        try:
            if action == "destroy" and attrs.get(holders.HOLDER):
                await self._discard_holder(str(attrs[holders.HOLDER]))
            elif action == "destroy" and attrs.get(holders.ROLE):
                self.pool.forget(cid)
                async with self._lock(cid):
                    await self.service.release_owner(cid)
            elif (
                action == "start"
                and attrs.get(holders.ROLE)
                and cid not in self._pending
                and cid not in self.pool
            ):
                async with self._lock(cid):  # the daemon restarted a holder: a new namespace
                    await self._replug(cid)
                await self._restart_dependents(cid)
        except Exception:
            log.exception("handling %s of %s failed", action, cid[:12])

    async def _restart_dependents(self, hid: str) -> None:
        """Start the holder's container if the daemon should have and could not: when the
        daemon restarts, it starts containers in no particular order, and one whose holder
        was not up yet fails and is not tried again. Only ``always`` is certain to be meant
        (``unless-stopped`` skips containers stopped by hand, which the API does not tell)."""
        filters = json.dumps({"label": [f"{holders.HOLDER}={hid}"]})
        listed = await self.api.call(
            "GET", "/containers/json", params={"all": "1", "filters": filters}
        )
        for c in listed:
            if c["State"] == "running":
                continue
            info = await self.api.inspect_container(c["Id"])
            if info and (info["HostConfig"].get("RestartPolicy") or {}).get("Name") == "always":
                log.info("starting %s, whose holder is back", c["Id"][:12])
                await self.api.call("POST", f"/containers/{c['Id']}/start")

    async def reconcile(self) -> None:
        """Free what belongs to no container; re-plug every running holder."""
        listed = await self.api.call("GET", "/containers/json", params={"all": "1"})
        held = {c["Id"]: c for c in listed if (c.get("Labels") or {}).get(holders.ROLE)}
        used = {
            str((c.get("Labels") or {}).get(holders.HOLDER))
            for c in listed
            if (c.get("Labels") or {}).get(holders.HOLDER)
        }
        if not held and not used and not self._pending:
            self._holding = False  # until a create or a spare says otherwise
        owners = await self.service.owners()
        for hid in set(held) - used - self._pending:
            idle = hid not in owners and held[hid]["State"] == "running"
            if hid in self.pool or (idle and self.pool.adopt(hid)):
                continue  # an idle holder (a spare, maybe of an earlier run): a spare
            log.info("removing orphan network holder %s", hid[:12])
            await self._discard_holder(hid)
        await self._top_up_spares()
        for owner in owners - set(held) - self._pending:
            log.info("releasing addresses of vanished holder %s", owner[:12])
            async with self._lock(owner):
                await self.service.release_owner(owner)
        for hid in used & set(held):
            if held[hid]["State"] == "running":
                async with self._lock(hid):
                    await self._replug(hid)


def _filters(call: Call) -> dict[str, list[str]]:
    try:
        return shapes.parse_filters(_query(call, "filters"))
    except shapes.FilterError as exc:
        raise Refuse(400, str(exc)) from None


def _query(call: Call, key: str) -> str | None:
    # as the request went upstream: plugstrip's networks are filtered as the daemon's were
    values = parse_qs(call.request.query).get(key)
    return values[0] if values else None


def builtin(adapter: NetworkAdapter) -> BuiltIn:
    """The adapter as the pipeline runs it: fail closed, with a long timeout (a create
    makes and starts a holder and wires its namespace)."""
    return BuiltIn(
        ROUTES, LoadedAdapter("network", adapter, HookPolicy(timeout=120.0)), adapter.wants
    )
