"""Containers on plugstrip networks: a create becomes a holder wired first plus the
user's container joining it; start, restart and remove follow the holder; inspects and
lists show the container's plugstrip endpoints in Docker's shapes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import quote

from netaddr import IPNetwork

from plugstrip.adapters.network import holder, shapes, weave_cidr
from plugstrip.adapters.network.holder_life import Holders
from plugstrip.adapters.network.networks import existing_container
from plugstrip.adapters.network.routing import On, query
from plugstrip.netdrivers.control.service import Attachment, NetworkService
from plugstrip.netdrivers.domain.errors import Conflict
from plugstrip.netdrivers.stores.store import NetworkRecord, NetworkSpec
from plugstrip.proxy.contract import Call, Refuse
from plugstrip.proxy.docker_api import DockerApi

DEFAULT_WEAVE_NETWORK = "weave"  # where WEAVE_CIDR's net:default lands, as in Weave
DOCKER_MODES = {"", "default", "bridge", "host", "none"}

Wanted = list[tuple[NetworkRecord, dict[str, Any]]]  # networks, each with its endpoint config
Dockers = list[tuple[str, dict[str, Any]]]  # Docker's networks, each with its endpoint config


class ContainerCalls:
    def __init__(self, service: NetworkService, api: DockerApi, holders: Holders) -> None:
        self.service = service
        self.api = api
        self.holders = holders
        self.table = (
            On.pre("POST /containers/create", self.create),
            On.pre("POST /containers/*/start", self.start),
            On.pre("POST /containers/*/restart", self.start),
            On.pre("DELETE /containers/*", self.before_remove),
            On.post("POST /containers/create", self.created),
            On.post("POST /containers/*/start", self.started),
            On.post("POST /containers/*/restart", self.started),
            On.post("GET /containers/json", self.listed),
            On.post("GET /containers/*/json", self.inspected),
            On.post("DELETE /containers/*", self.removed),
        )

    # ---- create ------------------------------------------------------------------------

    async def create(self, call: Call) -> None:
        body = call.request.json()
        if not isinstance(body, dict):
            return
        wanted, dockers = await self._wanted_networks(body)
        if not wanted:
            return
        mode = str((body.get("HostConfig") or {}).get("NetworkMode") or "")
        shown_mode = mode if mode not in DOCKER_MODES else wanted[0][0].name
        on_bridge = any(not r.internal for r, _ in wanted) and await self.holders.has_bridge()
        mac = body.pop("MacAddress", None)
        name = query(call, "name") or ""
        dockers = [(n, holder.docker_endpoint(config, name)) for n, config in dockers]
        request = holder.split_request(body, shown_mode, on_bridge, dockers[:1])
        hid = await self.holders.create(request)
        call.context["holder"] = hid
        try:
            for network, config in dockers[1:]:  # one network at create on older APIs
                await self.api.call(
                    "POST",
                    f"/networks/{quote(network, safe='')}/connect",
                    {"Container": hid, "EndpointConfig": config},
                )
            async with self.holders.lock(hid):
                ns = await self.holders.namespace(hid)  # starts it, unless a running spare
                for index, (record, config) in enumerate(wanted):
                    await self.holders.attach(
                        hid,
                        ns.netns,
                        record,
                        config,
                        None,
                        name,
                        (mac or None) if index == 0 else None,
                        body.get("Labels"),
                    )
                await self.holders.serve_names(hid, ns)
        except BaseException:
            await self.holders.discard(hid)
            raise
        holder.join(body, hid)

    async def _wanted_networks(self, body: dict[str, Any]) -> tuple[Wanted, Dockers]:
        """The plugstrip networks a create request asks for, each with its endpoint config
        (from the network mode, the endpoints config, and Weave's WEAVE_CIDR), and the
        user-defined Docker networks it asks for beside them."""
        mode = str((body.get("HostConfig") or {}).get("NetworkMode") or "")
        configs = dict((body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {})
        wanted: Wanted = []
        dockers: Dockers = []
        if mode not in DOCKER_MODES and not mode.startswith("container:"):
            record = await self.service.find(mode)
            config = configs.pop(mode, None) or {}
            if record is not None:
                wanted.append((record, config))
            else:
                dockers.append((mode, config))
        for key, config in configs.items():
            if key in DOCKER_MODES:  # newer clients name the mode here too
                continue
            record = await self.service.find(key)
            if record is None:
                dockers.append((key, config or {}))
            elif all(record.id != r.id for r, _ in wanted):
                wanted.append((record, config or {}))
        if wanted and mode in ("host", "none"):
            raise Refuse(
                400,
                f"container cannot be connected to network {wanted[0][0].name} "
                f"with network mode {mode}",
            )
        cidr = next(
            (e.split("=", 1)[1] for e in body.get("Env") or [] if e.startswith("WEAVE_CIDR=")),
            None,
        )
        if cidr is not None and (mode in DOCKER_MODES or wanted):
            wanted += await self._weave_cidr_networks(cidr, {r.id for r, _ in wanted})
        return wanted, dockers

    async def _weave_cidr_networks(self, text: str, taken: set[str]) -> Wanted:
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

    async def _network_for_subnet(self, name: str, subnet: IPNetwork | None) -> NetworkRecord:
        """The plugstrip network with exactly ``subnet`` (or named ``name`` for the default),
        made on first use as Weave made its subnets."""
        for record in await self.service.networks():
            if (subnet is None and record.name == name) or (
                subnet is not None and record.subnet == subnet
            ):
                return record
        spec = NetworkSpec(name, "plugstrip/weave", subnet)
        try:
            return await self.service.create_network(spec)
        except Conflict:
            found = await self.service.find(name)  # made meanwhile by a concurrent create
            if found is None:
                raise
            return found

    async def created(self, call: Call) -> None:
        hid = call.context.get("holder")
        response = call.response
        if hid is None or response is None:
            return
        try:
            if response.status != 201:
                await self.holders.discard(hid)
                return
            cid = str(response.json()["Id"])
            name = query(call, "name")
            if not name:
                info = await existing_container(self.api, cid)
                name = info["Name"].lstrip("/")
            await self.service.update_meta(hid, lambda m: replace(m, container=cid, name=name))
        finally:
            self.holders.created(hid)

    # ---- start, remove -----------------------------------------------------------------

    async def start(self, call: Call, name: str) -> None:
        info = await self.api.inspect_container(name)
        hid = holder.holder_of(info) if info is not None else None
        if not hid:
            return
        async with self.holders.lock(hid):
            held = await self.api.inspect_container(hid)
            if held is None:
                raise Refuse(
                    409,
                    f"the network holder of {info['Name'].lstrip('/')} is gone "  # type: ignore[index]
                    "(removed on the daemon): remove the container and create it again",
                )
            if not held["State"]["Running"]:
                await self.holders.replug(hid)

    async def started(self, call: Call, name: str) -> None:
        """A container in its own namespace got a new one: plug it in before the client
        hears that it started (the event would, a moment later)."""
        if call.response is None or call.response.status not in (204, 304):
            return
        if not self.holders.own:
            return
        info = await self.api.inspect_container(name)
        if info is None or not info["State"]["Running"] or holder.holder_of(info):
            return
        async with self.holders.lock(info["Id"]):
            if await self.holders.owns(info["Id"]):
                await self.holders.plug_own(info)

    async def before_remove(self, call: Call, name: str) -> None:
        info = await self.api.inspect_container(name)
        if info is not None:
            call.context["owner"] = holder.holder_of(info) or info["Id"]
            call.context["holder"] = holder.holder_of(info)

    async def removed(self, call: Call, _: str) -> None:
        owner = call.context.get("owner")
        if not owner or call.response is None or call.response.status >= 300:
            return
        if call.context.get("holder"):
            await self.holders.discard(owner)
        elif await self.holders.owns(owner):
            await self.holders.release(owner)

    # ---- inspect, list -----------------------------------------------------------------

    async def inspected(self, call: Call, _: str) -> None:
        response = call.response
        if response is None or response.status != 200:
            return
        body = response.body or b""
        if holder.HOLDER.encode() not in body and not self.holders.may_show_own(body):
            return  # none of plugstrip's: left as the daemon sent it, unparsed
        data = response.json()
        labels = (data.get("Config") or {}).get("Labels") or {}
        hid = labels.get(holder.HOLDER)
        settings = data.setdefault("NetworkSettings", {})
        if not hid:  # plugged in its own namespace, if at all: beside Docker's networks
            own = await self.service.attachments(data["Id"])
            if own:
                settings["Networks"] = {**(settings.get("Networks") or {}), **_shown(own, data)}
            return
        held = await self.api.inspect_container(hid) or {}
        docker_networks = (held.get("NetworkSettings") or {}).get("Networks") or {}
        settings["Networks"] = {
            **_dockers(docker_networks, labels),
            **_shown(await self.service.attachments(hid), data),
        }
        settings["Ports"] = (held.get("NetworkSettings") or {}).get("Ports") or {}
        for key in ("IPAddress", "Gateway", "MacAddress"):
            if key in settings:
                settings[key] = ""
        host_config = data.setdefault("HostConfig", {})
        host_config["NetworkMode"] = labels.get(holder.NETWORK_MODE, host_config.get("NetworkMode"))
        for key, value in (held.get("HostConfig") or {}).items():
            if key in holder.MOVED_HOST_CONFIG:
                host_config[key] = value
        user_dns = ((held.get("Config") or {}).get("Labels") or {}).get(holder.DNS)
        host_config["Dns"] = [s for s in (user_dns or "").split(",") if s]
        for key, value in (held.get("Config") or {}).items():
            if key in holder.MOVED_CONFIG:
                data["Config"][key] = value

    async def listed(self, call: Call) -> None:
        response = call.response
        if response is None or response.status != 200:
            return
        body = response.body or b""
        if holder.LABEL_PREFIX.encode() not in body and not self.holders.may_show_own(body):
            return  # none of plugstrip's containers: left as the daemon sent it, unparsed
        listed = response.json()
        by_owner: dict[str, list[Attachment]] = {}
        for a in await self.service.attachments():
            by_owner.setdefault(a.owner, []).append(a)
        held = {c["Id"]: c for c in listed if (c.get("Labels") or {}).get(holder.ROLE)}
        if not held and not any(
            (c.get("Labels") or {}).get(holder.HOLDER) or c["Id"] in by_owner for c in listed
        ):
            return  # none of plugstrip's containers: left as the daemon sent it
        out = []
        for c in listed:
            labels = c.get("Labels") or {}
            if labels.get(holder.ROLE):
                continue
            hid = labels.get(holder.HOLDER)
            settings = c.setdefault("NetworkSettings", {})
            if hid:
                c.setdefault("HostConfig", {})["NetworkMode"] = labels.get(holder.NETWORK_MODE)
                docker_networks = (held.get(hid, {}).get("NetworkSettings") or {}).get("Networks")
                settings["Networks"] = {
                    **_dockers(docker_networks or {}, labels),
                    **_shown(by_owner.get(hid, []), c),
                }
                if hid in held:
                    c["Ports"] = held[hid].get("Ports") or []
            elif c["Id"] in by_owner:
                networks = settings.get("Networks") or {}
                settings["Networks"] = {**networks, **_shown(by_owner[c["Id"]], c)}
            out.append(c)
        response.set_json(out)


def _shown(attachments: list[Attachment], container: dict[str, Any]) -> dict[str, Any]:
    return {a.network.name: shapes.container_endpoint(a, container["Id"]) for a in attachments}


def _dockers(networks: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """The Docker networks a holder is on, as its container's: the default bridge only if
    the user asked for it (plugstrip puts holders there for their outbound traffic)."""
    asked = labels.get(holder.NETWORK_MODE) in ("bridge", "default")
    return {name: n for name, n in networks.items() if name != "bridge" or asked}
