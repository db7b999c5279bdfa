"""Answers that show other clients' objects, cut to what the client may see (ownership).

The daemon's label filter already narrows lists of containers, networks, volumes and
services to the client's own; what remains is the objects an answer embeds: the
containers on a network, every container and volume in ``system df``, the counts of
containers per image or per volume, the tasks of others' services. ``fields.yaml``'s
``answers`` section classifies every field of each answer the policy reads (``names``,
``counts``, ``belongs``); this module walks an answer with it and edits it in place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from plugstrip.adapters.policy.fields import BELONGS, COUNTS, HOLDS, NAMES, classes_of
from plugstrip.adapters.policy.powers import Daemon
from plugstrip.proxy.contract import OWNER_LABEL, dumps
from plugstrip.proxy.docker_types import Type, definition

_SECTION = "answers"
_OTHERS = (NAMES, COUNTS, BELONGS)


_SHOWS: dict[int, bool] = {}  # by the type's identity: types are engine_api.json's own dicts


def shows_others(kind: Type) -> bool:
    """Whether an answer of this type can show others' objects (a list of networks can,
    an image list can, a container's inspect cannot)."""
    key = id(kind)
    if key not in _SHOWS:
        _SHOWS[key] = _reaches(kind, set())
    return _SHOWS[key]


def _reaches(kind: Type, seen: set[str]) -> bool:
    if not isinstance(kind, dict):
        return False
    if "list" in kind or "map" in kind:
        return _reaches(kind.get("list", kind.get("map")), seen)
    name = kind["def"]
    if name in seen:
        return False
    seen.add(name)
    found = definition(name)
    for field, sub in found.fields.items():
        classes = classes_of(found.declared_in[field], field, _SECTION)
        if any(c.tag in _OTHERS for c in classes):
            return True
        if any(c.tag == HOLDS for c in classes) and _reaches(sub, seen):
            return True
    return False


class Owned:
    """The client's own objects, asked of the daemon once per answer, when first needed."""

    def __init__(self, daemon: Daemon, who: str) -> None:
        self.daemon, self.who = daemon, who
        self._lists: dict[str, list[dict[str, Any]]] = {}

    async def listed(self, kind: str) -> list[dict[str, Any]]:
        if kind not in self._lists:
            query = quote(dumps({"label": [f"{OWNER_LABEL}={self.who}"]}).decode(), safe="")
            path = {"container": "/containers/json?all=1&", "service": "/services?"}[kind]
            self._lists[kind] = await self.daemon.call("GET", f"{path}filters={query}") or []
        return self._lists[kind]

    async def visible(self, kind: str, item: Any) -> bool:
        """An object (by its labels) or an id the client may see."""
        if isinstance(item, dict) and isinstance(item.get("Labels"), dict):
            return bool(item["Labels"].get(OWNER_LABEL) == self.who)
        if isinstance(item, dict):
            item = item.get("Id") or item.get("ID") or item.get("Name")
        if kind in ("container", "service"):
            return any(item in (o.get("Id"), o.get("ID")) for o in await self.listed(kind))
        return False  # a kind with no labels to tell: not shown


Counter = Callable[[dict[str, Any], Any, Owned], Awaitable[Any]]


async def _image_containers(image: dict[str, Any], count: Any, owned: Owned) -> Any:
    if count == -1:  # not computed by the daemon for this answer
        return count
    return sum(1 for c in await owned.listed("container") if c.get("ImageID") == image.get("Id"))


async def _volume_usage(volume: dict[str, Any], usage: Any, owned: Owned) -> Any:
    if not isinstance(usage, dict) or usage.get("RefCount", -1) == -1:
        return usage
    name = volume.get("Name")
    users = [
        c
        for c in await owned.listed("container")
        if any(m.get("Name") == name for m in c.get("Mounts") or [])
    ]
    return {**usage, "RefCount": len(users)}


COUNTERS: dict[str, Counter] = {
    "ImageSummary.Containers": _image_containers,
    "Volume.UsageData": _volume_usage,
}


async def cut(kind: Type, value: Any, owned: Owned) -> None:
    """Edit ``value`` (an answer of type ``kind``) in place to what the client may see."""
    if not isinstance(kind, dict) or value is None:
        return
    if "list" in kind and isinstance(value, list):
        item = kind["list"]
        for element in value:
            await cut(item, element, owned)
        if isinstance(item, dict) and "def" in item:
            value[:] = [e for e in value if await _belongs(item["def"], e, owned)]
    elif "map" in kind and isinstance(value, dict):
        for element in value.values():
            await cut(kind["map"], element, owned)
    elif "def" in kind and isinstance(value, dict):
        found = definition(kind["def"])
        for field in list(value):
            if field not in found.fields:
                continue
            declared = found.declared_in[field]
            for cls in classes_of(declared, field, _SECTION):
                if cls.tag == HOLDS and shows_others(found.fields[field]):
                    await cut(found.fields[field], value[field], owned)
                elif cls.tag == NAMES:
                    value[field] = await _keep(cls.name, value[field], owned)
                elif cls.tag == COUNTS:
                    value[field] = await COUNTERS[f"{declared}.{field}"](value, value[field], owned)


async def _keep(kind: str, shown: Any, owned: Owned) -> Any:
    if isinstance(shown, dict):  # keyed by the objects' ids
        return {k: v for k, v in shown.items() if await owned.visible(kind, k)}
    if isinstance(shown, list):
        return [o for o in shown if await owned.visible(kind, o)]
    return shown


async def _belongs(name: str, element: Any, owned: Owned) -> bool:
    if not isinstance(element, dict):
        return True
    found = definition(name)
    for field, value in element.items():
        if field not in found.fields:
            continue
        for cls in classes_of(found.declared_in[field], field, _SECTION):
            if cls.tag == BELONGS and not await owned.visible(cls.name, value):
                return False
    return True
