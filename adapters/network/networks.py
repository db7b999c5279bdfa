"""The network API for plugstrip's drivers: create, inspect, remove, list, prune,
connect and disconnect, answered here (``call.respond``) or added to Docker's answers."""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Literal
from urllib.parse import quote

from netaddr import AddrFormatError, IPAddress, IPNetwork

from plugstrip.adapters.network import holder, shapes
from plugstrip.adapters.network.holder_life import Holders, netns_of
from plugstrip.adapters.network.routing import On, filters
from plugstrip.netdrivers.control.service import NetworkService
from plugstrip.netdrivers.domain import ipam
from plugstrip.netdrivers.stores.store import NetworkRecord, NetworkSpec
from plugstrip.proxy.contract import OWNER_KEY, OWNER_LABEL, Call, Refuse
from plugstrip.proxy.docker_api import DockerApi

log = logging.getLogger("plugstrip.network")

PREFIX = "plugstrip/"


class NetworkCalls:
    def __init__(self, service: NetworkService, api: DockerApi, holders: Holders) -> None:
        self.service = service
        self.api = api
        self.holders = holders
        self.table = (
            On.pre("POST /networks/create", self.create),
            On.pre("GET /networks/*", self.inspect),
            On.pre("DELETE /networks/*", self.remove),
            On.pre("POST /networks/*/connect", self.connect),
            On.pre("POST /networks/*/disconnect", self.disconnect),
            On.post("GET /networks", self.listed),
            On.post("GET /networks/*", self.docker_inspected),
            On.post("POST /networks/prune", self.pruned),
        )

    async def create(self, call: Call) -> None:
        body = call.request.json() or {}
        name, driver = str(body.get("Name") or ""), str(body.get("Driver") or "")
        if not driver.startswith(PREFIX):
            mine = await self.service.find(name) if name else None
            if mine is not None and mine.name == name:
                raise Refuse(409, f"network with name {name} already exists")
            return
        spec = network_spec(body)
        self.service.driver(spec.driver)  # an unknown driver is refused before any lookup
        await self.service.check_groups(holder.listed(spec.options.get(holder.NETWORK_GROUPS)))
        docker_own = await self.api.call(
            "GET", f"/networks/{quote(name, safe='')}", ok_missing=True
        )
        if docker_own is not None and docker_own.get("Name") == name:
            raise Refuse(409, f"network with name {name} already exists")
        record = await self.service.create_network(spec)
        log.info("network created", extra={"network": name, "subnet": str(record.subnet)})
        await self.holders.top_up_spares()
        call.respond(201, {"Id": record.id, "Warning": ""})

    async def _network(self, call: Call, name: str) -> NetworkRecord | None:
        """The plugstrip network ``name``, if there is one this call may see (with a
        policy's ownership, another client's answers as absent, as Docker's do)."""
        record = await self.service.find(name)
        owner = call.context.get(OWNER_KEY)
        if record is not None and owner is not None and record.labels.get(OWNER_LABEL) != owner:
            raise Refuse(404, f"network {name} not found")
        return record

    async def inspect(self, call: Call, name: str) -> None:
        record = await self._network(call, name)
        if record is not None:
            attachments = await self.service.attachments(network=record)
            call.respond(200, shapes.network(record, attachments))

    async def docker_inspected(self, call: Call, _: str) -> None:
        """A Docker network's members as their users see them: a holder on it is shown
        as the container it holds for (name, id), as on Docker's own networks."""
        response = call.response
        if response is None or response.status != 200 or not self.holders.holding:
            return
        if holder.NAME_PREFIX.encode() not in (response.body or b""):
            return
        doc = response.json()
        members = doc.get("Containers") if isinstance(doc, dict) else None
        if not members:
            return
        held = json.dumps({"label": [holder.HOLDER]})
        users = {
            str(c["Labels"][holder.HOLDER]): c
            for c in await self.api.call(
                "GET", "/containers/json", params={"all": "1", "filters": held}
            )
        }
        shown = {}
        for cid, member in members.items():
            user = users.get(cid)
            if user is not None:
                member = {**member, "Name": user["Names"][0].lstrip("/")}
                cid = user["Id"]
            shown[cid] = member
        doc["Containers"] = shown
        response.set_json(doc)

    async def remove(self, call: Call, name: str) -> None:
        record = await self._network(call, name)
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
        """Whether containers are on the network. A holder (or a container in its own
        namespace) whose container is gone but whose destroy event is not handled yet
        (``run --rm`` returns as the daemon removes the container) is let go here, so
        ``network rm`` right after works as on Docker's own networks."""
        attachments = await self.service.attachments(network=record)
        for a in attachments:
            if not self.service.is_local(a) or a.owner in self.holders.pending:
                continue
            if a.owner == a.meta.container:  # in its own namespace
                if await self.api.inspect_container(a.owner) is None:
                    await self.holders.release(a.owner)
                continue
            users = json.dumps({"label": [f"{holder.HOLDER}={a.owner}"]})
            if not await self.api.call(
                "GET", "/containers/json", params={"all": "1", "filters": users}
            ):
                await self.holders.discard(a.owner)
        return bool(await self.service.attachments(network=record))

    async def listed(self, call: Call) -> None:
        selected = await self._selected(call)
        if selected is not None:
            assert call.response is not None
            call.response.json().extend(shapes.network(r, []) for r, _ in selected)

    async def pruned(self, call: Call) -> None:
        selected = await self._selected(call)
        if selected is None:
            return
        pruned = []
        for record, in_use in selected:
            if not in_use:
                await self.service.delete_network(record)
                pruned.append(record.name)
        if pruned:
            assert call.response is not None
            result = call.response.json() or {}
            result["NetworksDeleted"] = [*(result.get("NetworksDeleted") or []), *pruned]
            call.response.set_json(result)

    async def _selected(self, call: Call) -> list[tuple[NetworkRecord, bool]] | None:
        """The plugstrip networks the call's filters select, each with whether endpoints
        are on it, to add to the daemon's answer; None if the daemon did not answer 200."""
        if call.response is None or call.response.status != 200:
            return None
        wanted = filters(call)
        records, every = await self.service.snapshot()
        in_use = {a.network.id for a in every}
        return [(r, r.id in in_use) for r in records if shapes.matches(r, wanted, r.id in in_use)]

    async def connect(self, call: Call, name: str) -> None:
        found = await self._endpoint_call(call, name, connect=True)
        if found is None:
            return
        record, info, hid = found
        config = (call.request.json() or {}).get("EndpointConfig") or {}
        owner = hid or _own_namespace(info)
        async with self.holders.lock(owner):
            if any(a.network.id == record.id for a in await self.service.attachments(owner)):
                raise Refuse(
                    403,
                    f"endpoint with name {info['Name'].lstrip('/')} already exists "
                    f"in network {record.name}",
                )
            if hid:
                ns = await self.holders.namespace(hid)
                await self.holders.attach(hid, ns.netns, record, config, info)
            else:  # plugged now if it runs, else when it starts
                running = bool(info["State"]["Running"])
                netns = netns_of(info) if running else None
                await self.holders.attach(owner, netns, record, config, info)
                if running:
                    await self.holders.plug_own(info)
        call.respond(200, body=b"", content_type="text/plain")

    async def disconnect(self, call: Call, name: str) -> None:
        found = await self._endpoint_call(call, name, connect=False)
        if found is None:
            return
        record, info, hid = found
        owner = hid or info["Id"]
        async with self.holders.lock(owner):
            if not await self.service.detach(record, owner):
                raise Refuse(
                    403,
                    f"container {info['Id']} is not connected to network {record.name}",
                )
            if not hid and not await self.holders.owns(owner):
                await self.holders.unplugged_own(info)
        call.respond(200, body=b"", content_type="text/plain")

    async def _endpoint_call(
        self, call: Call, name: str, connect: bool
    ) -> tuple[NetworkRecord, dict[str, Any], str | None] | None:
        """For connect and disconnect: the plugstrip network, the container's inspect and
        its holder (None: the container has none). None when the network is not
        plugstrip's: the daemon answers, for the holder if the container has one (the
        holder's namespace is the container's)."""
        record = await self._network(call, name)
        body = call.request.json() or {}
        if record is None:
            await self._to_holder(body, connect)
            return None
        info = await existing_container(self.api, str(body.get("Container") or ""))
        return record, info, holder.holder_of(info)

    async def _to_holder(self, body: dict[str, Any], connect: bool) -> None:
        """Send a connect or disconnect of Docker's network to the container's holder,
        with the container's name among the endpoint's aliases (Docker's resolver then
        answers it with the holder's address there)."""
        if not self.holders.holding or not isinstance(body, dict):
            return
        info = await self.api.inspect_container(str(body.get("Container") or ""))
        hid = holder.holder_of(info) if info is not None else None
        if info is None or hid is None:
            return
        body["Container"] = hid
        if connect:
            config = body.get("EndpointConfig") or {}
            aliases = [str(a) for a in config.get("Aliases") or []]
            name = info["Name"].lstrip("/")
            config["Aliases"] = aliases if name in aliases else [*aliases, name]
            body["EndpointConfig"] = config


def _own_namespace(info: dict[str, Any]) -> str:
    """The container itself as the owner of its endpoints, if Docker would let it join
    another network."""
    mode = str(info["HostConfig"].get("NetworkMode") or "")
    if mode == "host":
        raise Refuse(
            400, "container cannot be disconnected from host network or connected to host network"
        )
    if mode.startswith("container:"):
        raise Refuse(
            400,
            "container sharing network namespace with another container or host cannot be "
            "connected to any other network",
        )
    return str(info["Id"])


async def existing_container(api: DockerApi, name_or_id: str) -> dict[str, Any]:
    info = await api.inspect_container(name_or_id) if name_or_id else None
    if info is None:
        raise Refuse(404, f"No such container: {name_or_id}")
    return info


def network_spec(body: dict[str, Any]) -> NetworkSpec:
    """A network create body for one of plugstrip's drivers, as plain intent."""
    name, driver = str(body.get("Name") or ""), str(body["Driver"])
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name):
        raise Refuse(400, f"invalid network name {name!r}")
    for flag, what in (("Ingress", "ingress networks"), ("ConfigOnly", "config-only networks")):
        if body.get(flag):
            raise Refuse(400, f"{driver} does not support {what}")
    if (body.get("ConfigFrom") or {}).get("Network"):
        raise Refuse(400, f"{driver} does not support --config-from")
    options = {str(k): str(v) for k, v in (body.get("Options") or {}).items()}
    if set(options) - {holder.NETWORK_GROUPS}:
        unknown = ", ".join(sorted(set(options) - {holder.NETWORK_GROUPS}))
        raise Refuse(400, f"{driver} takes one driver option, security-groups (got: {unknown})")
    ipam_body = body.get("IPAM") or {}
    if (ipam_body.get("Driver") or "default") != "default" or ipam_body.get("Options"):
        raise Refuse(400, f"{driver} has its own IPAM: no --ipam-driver or --ipam-opt")
    by_family: dict[int, dict[str, Any]] = {}
    for config in ipam_body.get("Config") or []:
        version = 6 if ":" in str(config.get("Subnet") or config.get("Gateway") or "") else 4
        if version in by_family:  # Docker's words for its bridge driver
            raise Refuse(400, f"{driver} driver doesn't support multiple subnets")
        by_family[version] = config
        if config.get("IPRange"):
            raise Refuse(400, f"{driver} does not support --ip-range")
    ipv6 = bool(body.get("EnableIPv6"))
    if 6 in by_family and not ipv6:  # dockerd 28 keeps such a subnet and uses it not
        raise Refuse(
            400,
            f"IPv6 subnet {by_family[6].get('Subnet')} given without --ipv6: "
            "add --ipv6 to make a dual-stack network",
        )
    subnet, gateway = _subnet(by_family.get(4, {}), 4)
    subnet6, gateway6 = _subnet(by_family.get(6, {}), 6)
    return NetworkSpec(
        name,
        driver,
        subnet,
        gateway,
        options,
        {str(k): str(v) for k, v in (body.get("Labels") or {}).items()},
        bool(body.get("Internal")),
        ipv6,
        subnet6,
        gateway6,
        _aux([_aux_of(c) for c in by_family.values()]),
    )


def _aux(families: list[dict[str, IPAddress]]) -> dict[str, IPAddress]:
    merged: dict[str, IPAddress] = {}
    for each in families:
        for name, address in each.items():
            if name in merged:
                raise Refuse(400, f"auxiliary address name {name} given twice")
            merged[name] = address
    return merged


def _aux_of(config: dict[str, Any]) -> dict[str, IPAddress]:
    """One family's ``--aux-address name=address`` (reserved: IPAM hands them not out)."""
    out = {}
    for name, text in (config.get("AuxiliaryAddresses") or {}).items():
        if not config.get("Subnet"):
            raise Refuse(400, "--aux-address needs --subnet")
        try:
            out[str(name)] = IPAddress(str(text))
        except (AddrFormatError, ValueError):
            raise Refuse(400, f"invalid auxiliary address {name}={text!r}") from None
    return out


def _subnet(
    config: dict[str, Any], version: Literal[4, 6]
) -> tuple[IPNetwork | None, IPAddress | None]:
    """The subnet (or None: the pool's next) and gateway of one family's IPAM config."""
    subnet = ipam.parse_subnet(config["Subnet"], version) if config.get("Subnet") else None
    if not config.get("Gateway"):
        return subnet, None
    if subnet is None:
        raise Refuse(400, "--gateway needs --subnet")
    try:
        return subnet, IPAddress(config["Gateway"], version)
    except (AddrFormatError, ValueError):
        raise Refuse(400, f"invalid gateway {config['Gateway']!r}") from None
