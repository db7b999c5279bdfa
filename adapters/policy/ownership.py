"""Objects owned by the client that made them, for the policy's ``ownership: true``.

A create (container, network, volume, service, secret, config) gets the label
``io.plugstrip.owner=<identity>`` (whatever the client wrote there); lists, events and
prunes get a label filter the daemon applies; any other call naming one of those or an
exec in its path checks the owner label on the daemon first, and what the client does not
own answers in the daemon's own words, as if it were absent. An exec belongs to whoever
owns its container. Every reference inside a body (``ref KIND`` in fields.yaml: links,
``VolumesFrom``, ``container:`` modes, networks, volumes, secrets...) is resolved by the
daemon as it resolves it (name, id, id prefix) and checked the same way
(``REFERENCES``). Docker's predefined networks (bridge, host, none) are shared: usable by
name, not listed. Images are shared: every client sees and uses all of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from plugstrip.adapters.policy.answers import Owned, cut, shows_others
from plugstrip.adapters.policy.fields import REF, Hit
from plugstrip.adapters.policy.powers import Daemon, strings
from plugstrip.proxy.contract import (
    OWNER_KEY,
    OWNER_LABEL,
    Call,
    HttpRequest,
    Refuse,
    dumps,
    loads,
)
from plugstrip.proxy.docker_types import Type, answer_type, served

_PREDEFINED_NETWORKS = ("bridge", "host", "none", "default")
# The daemon's handlers (its router's, ``docker_types.served``) whose objects are the
# client's own: lists and prunes get an owner filter, creates a stamp.
_FILTERED = {
    "getContainersJSON",
    "getVolumesList",
    "getNetworksList",
    "getEvents",
    "getServices",
    "getSecrets",
    "getConfigs",
    "postContainersPrune",
    "postVolumesPrune",
    "postNetworksPrune",
}
_CREATES = {
    "postContainersCreate",
    "postNetworkCreate",
    "postVolumesCreate",
    "createService",
    "createSecret",
    "createConfig",
}


class Ownership:
    async def pre_hook(self, call: Call, daemon: Daemon, hits: Iterable[Hit] = ()) -> None:
        """The call's own object (its path) first, then every reference its body makes."""
        await self._path(call, daemon)
        who = call.peer.identity
        for hit in hits:
            if hit.tag == REF:
                await REFERENCES[hit.name](daemon, hit, who)

    def answer_to_cut(self, method: str, path: str) -> Type | None:
        """The type of this call's answer, where it can show other clients' objects."""
        kind = answer_type(method, path)
        return kind if kind is not None and shows_others(kind) else None

    async def post_hook(self, call: Call, daemon: Daemon, kind: Type) -> None:
        """An answer (of type ``kind``) cut to what the client may see (``answers``)."""
        if call.response is not None and call.response.body:
            await cut(kind, call.response.json(), Owned(daemon, call.peer.identity))

    async def _path(self, call: Call, daemon: Daemon) -> None:
        """The object the path names, as the daemon's router reads the path."""
        req, who = call.request, call.peer.identity
        call.context[OWNER_KEY] = who
        route = served(req.method, req.path)
        if route is None:
            return  # the daemon serves no such route: it answers 404
        if route.handler in _FILTERED:
            req.query = _with_owner_filter(req.query, who)
            return
        if route.handler in _CREATES:
            self._stamp(req, who)
            return
        if route.handler == "postCommit":
            container = next((v for k, v in parse_qsl(req.query) if k == "container"), "")
            await _own_container(daemon, container, who)
            return
        if not route.params:
            return
        kind, name = route.route.split("/")[1], route.params[0]
        if kind == "containers":
            await _own_container(daemon, name, who)
        elif kind == "networks":
            await _own_network(daemon, name, who)
        elif kind in ("services", "secrets", "configs"):
            await _own_swarm_object(daemon, kind, name, who)
        elif kind == "volumes":
            await _own(daemon, f"/volumes/{_q(name)}", who, f"get {name}: no such volume")
        elif kind == "exec":
            info = await daemon.call("GET", f"/exec/{_q(name)}/json", ok_missing=True)
            if info is None:
                return
            missing = f"No such exec instance: {name}"
            await _own_container(daemon, str(info.get("ContainerID", "")), who, missing)

    def _stamp(self, req: HttpRequest, who: str) -> None:
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


# ---- references inside bodies, by kind (fields.yaml's ``ref KIND``) ------------------------
# Each answers as the daemon does for an absent object where it can (its status and words,
# measured in tests/test_policy_references.py); a network the daemon only looks up at
# start is refused at create with its 404.

Reference = Callable[[Daemon, Hit, str], Awaitable[None]]


async def _ref_container(daemon: Daemon, hit: Hit, who: str) -> None:
    await _own_container(daemon, str(hit.value), who)


async def _ref_container_links(daemon: Daemon, hit: Hit, who: str) -> None:
    """``name:alias`` (or ``/name:/c/alias``, as inspect shows it): the daemon resolves
    the name part."""
    for link in strings(hit.value):
        name = link.split(":")[0].removeprefix("/")
        missing = f"could not get container for {name}: No such container: {name}"
        await _own_container(daemon, name, who, missing, status=400)


async def _ref_container_from(daemon: Daemon, hit: Hit, who: str) -> None:
    for source in strings(hit.value):
        await _own_container(daemon, source.split(":", 1)[0], who, status=400)


async def _ref_container_mode(daemon: Daemon, hit: Hit, who: str) -> None:
    mode = str(hit.value)
    if mode.startswith("container:"):
        await _own_container(daemon, mode.partition(":")[2], who, status=400)


async def _ref_network_mode(daemon: Daemon, hit: Hit, who: str) -> None:
    mode = str(hit.value)
    if mode.startswith("container:"):
        await _own_container(daemon, mode.partition(":")[2], who, status=400)
    elif mode and mode not in _PREDEFINED_NETWORKS:
        await _own_network(daemon, mode, who)


async def _ref_network(daemon: Daemon, hit: Hit, who: str) -> None:
    if hit.value and str(hit.value) not in _PREDEFINED_NETWORKS:
        await _own_network(daemon, str(hit.value), who)


async def _ref_network_keys(daemon: Daemon, hit: Hit, who: str) -> None:
    for network in hit.value if isinstance(hit.value, dict) else ():
        if network not in _PREDEFINED_NETWORKS:
            await _own_network(daemon, network, who)


async def _ref_volume_binds(daemon: Daemon, hit: Hit, who: str) -> None:
    for bind in strings(hit.value):
        source = bind.split(":", 1)[0]
        if source and not source.startswith("/"):
            await _own_volume(daemon, source, who)


async def _ref_volume_mount(daemon: Daemon, hit: Hit, who: str) -> None:
    if str(hit.parent.get("Type") or "").lower() == "volume" and hit.value:
        await _own_volume(daemon, str(hit.value), who)


def _ref_swarm(kind: str) -> Reference:
    async def check(daemon: Daemon, hit: Hit, who: str) -> None:
        if hit.value:
            await _own_swarm_object(daemon, kind, str(hit.value), who)

    return check


async def _ref_shared(daemon: Daemon, hit: Hit, who: str) -> None:
    """Images are shared: every client may use every image."""


REFERENCES: dict[str, Reference] = {
    "container": _ref_container,
    "container_links": _ref_container_links,
    "container_from": _ref_container_from,
    "container_mode": _ref_container_mode,
    "network_mode": _ref_network_mode,
    "network": _ref_network,
    "network_keys": _ref_network_keys,
    "volume_binds": _ref_volume_binds,
    "volume_mount": _ref_volume_mount,
    "secret": _ref_swarm("secrets"),
    "config": _ref_swarm("configs"),
    "image": _ref_shared,
    "images": _ref_shared,
}


async def _own_volume(daemon: Daemon, name: str, who: str) -> None:
    """A volume named in a mount: the daemon would make it if absent, which it cannot be
    for a name another client holds, so the answer is the conflict the name's holder
    makes (a name taken is the one thing ownership cannot hide)."""
    info = await daemon.call("GET", f"/volumes/{_q(name)}", ok_missing=True)
    if info is not None:
        _check(info, who, f"the volume name {name} is in use by another client", 409)


async def _own_swarm_object(daemon: Daemon, kind: str, name: str, who: str) -> None:
    singular = kind.removesuffix("s")
    info = await daemon.call("GET", f"/{kind}/{_q(name)}", ok_missing=True)
    if info is not None:
        _check(info, who, f"{singular} {name} not found")


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
    labels = (
        info.get("Labels")
        or (info.get("Config") or {}).get("Labels")
        or (info.get("Spec") or {}).get("Labels")  # services, secrets, configs
        or {}
    )
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
