"""Objects owned by the client that made them, for the policy's ``ownership: true``.

A create (container, network, volume) gets the label ``io.plugstrip.owner=<identity>``
(whatever the client wrote there); lists, events and prunes get a label filter the daemon
applies; any other call naming a container, network, volume or exec checks the owner
label on the daemon first, and what the client does not own answers 404 in the daemon's
own words, as if it were absent. An exec belongs to whoever owns its container.
Docker's predefined networks (bridge, host, none) are shared: usable by name, not listed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from plugstrip.adapters.policy.rules import Daemon
from plugstrip.proxy.contract import (
    OWNER_KEY,
    OWNER_LABEL,
    Call,
    HttpRequest,
    Refuse,
    dumps,
    loads,
    split_version,
)

_PREDEFINED_NETWORKS = ("bridge", "host", "none", "default")
_CREATES = {"/containers/create", "/networks/create", "/volumes/create"}
_FILTERED = {
    ("GET", "/containers/json"),
    ("GET", "/volumes"),
    ("GET", "/networks"),
    ("GET", "/events"),
    ("POST", "/containers/prune"),
    ("POST", "/volumes/prune"),
    ("POST", "/networks/prune"),
}
_NOT_IDS = {"json", "create", "prune"}


class Ownership:
    async def pre_hook(self, call: Call, daemon: Daemon) -> None:
        req, who = call.request, call.peer.identity
        call.context[OWNER_KEY] = who
        _, rest = split_version(req.path)
        if (req.method, rest) in _FILTERED:
            req.query = _with_owner_filter(req.query, who)
            return
        if req.method == "POST" and rest in _CREATES:
            await self._stamp(req, rest, who, daemon)
            return
        if req.method == "POST" and rest == "/commit":
            container = next((v for k, v in parse_qsl(req.query) if k == "container"), "")
            await _own_container(daemon, container, who)
            return
        parts = rest.strip("/").split("/")
        if len(parts) < 2 or parts[1] in _NOT_IDS:
            return
        kind, name = parts[0], parts[1]
        if kind == "containers":
            await _own_container(daemon, name, who)
        elif kind == "networks":
            await _own_network(daemon, name, who)
            body = req.json() if req.body else None
            if isinstance(body, dict) and body.get("Container"):
                await _own_container(daemon, str(body["Container"]), who)
        elif kind == "volumes":
            await _own(daemon, f"/volumes/{_q(name)}", who, f"get {name}: no such volume")
        elif kind == "exec":
            info = await daemon.call("GET", f"/exec/{_q(name)}/json", ok_missing=True)
            if info is None:
                return
            missing = f"No such exec instance: {name}"
            await _own_container(daemon, str(info.get("ContainerID", "")), who, missing)

    async def _stamp(self, req: HttpRequest, rest: str, who: str, daemon: Daemon) -> None:
        body = req.json() if req.body else {}
        if not isinstance(body, dict):
            return  # the daemon refuses it
        labels = body.get("Labels")
        if labels is None:
            labels = body["Labels"] = {}
        if not isinstance(labels, dict):
            raise Refuse(400, "plugstrip policy: Labels must be an object")
        labels[OWNER_LABEL] = who
        if req.body is None or not req.body:
            req.set_json(body)
        if rest == "/containers/create":
            await _own_references(daemon, body, who)


async def _own_references(daemon: Daemon, body: dict[str, Any], who: str) -> None:
    """A new container may name others (namespaces, volumes) and networks: owned too. The
    daemon answers a missing container named so with a 400 (a missing network only fails
    at start; plugstrip refuses at create, with the daemon's 404 for a network)."""
    for host in (body, body.get("HostConfig") or {}):
        if not isinstance(host, dict):
            continue
        for key in ("NetworkMode", "PidMode", "IpcMode"):
            mode = str(host.get(key) or "")
            if mode.startswith("container:"):
                await _own_container(daemon, mode.partition(":")[2], who, status=400)
            elif key == "NetworkMode" and mode and mode not in _PREDEFINED_NETWORKS:
                await _own_network(daemon, mode, who)
        for source in host.get("VolumesFrom") or []:
            await _own_container(daemon, str(source).split(":", 1)[0], who, status=400)
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    for network in endpoints if isinstance(endpoints, dict) else ():
        if network not in _PREDEFINED_NETWORKS:
            await _own_network(daemon, network, who)


async def _own_container(
    daemon: Daemon, name: str, who: str, missing: str = "", status: int = 404
) -> None:
    missing = missing or f"No such container: {name}"
    await _own(daemon, f"/containers/{_q(name)}/json", who, missing, status)


async def _own_network(daemon: Daemon, name: str, who: str) -> None:
    info = await daemon.call("GET", f"/networks/{_q(name)}", ok_missing=True)
    if info is not None and info.get("Name") not in _PREDEFINED_NETWORKS:
        _check(info, who, f"network {name} not found")


async def _own(daemon: Daemon, path: str, who: str, missing: str, status: int = 404) -> None:
    info = await daemon.call("GET", path, ok_missing=True)
    if info is not None:  # absent: the daemon gives its own answer
        _check(info, who, missing, status)


def _check(info: dict[str, Any], who: str, missing: str, status: int = 404) -> None:
    labels = info.get("Labels") or (info.get("Config") or {}).get("Labels") or {}
    if labels.get(OWNER_LABEL) != who:
        raise Refuse(status, missing)


def _with_owner_filter(query: str, who: str) -> str:
    """The query with ``label=io.plugstrip.owner=<who>`` added to its ``filters`` (ANDed
    with the client's own), in either of the shapes Docker reads."""
    pairs = parse_qsl(query, keep_blank_values=True)
    raw = next((v for k, v in pairs if k == "filters"), "")  # Go reads the first
    try:
        filters = loads(raw) if raw else {}
    except ValueError:
        raise Refuse(400, "plugstrip policy: filters is not JSON") from None
    if not isinstance(filters, dict):
        raise Refuse(400, "plugstrip policy: filters must be an object")
    wanted = f"{OWNER_LABEL}={who}"
    label = filters.get("label")
    if isinstance(label, dict):
        label[wanted] = True
    else:
        filters["label"] = [*(label if isinstance(label, list) else []), wanted]
    rest = [(k, v) for k, v in pairs if k != "filters"]
    return urlencode([*rest, ("filters", dumps(filters).decode())])


def _q(name: str) -> str:
    return quote(name, safe="")
