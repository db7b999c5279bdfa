"""The policy's field table (``fields.yaml``) and the walk that reads a body with it.

Every field of every request body the Engine API defines (``plugstrip.proxy.docker_types``,
derived from its swagger) has a class in the table: harmless, a nested definition that
``holds`` classified fields, a ``power`` over the host (``rules.POWERS`` says which rule
governs each check) or a ``ref`` to another object (``ownership.REFERENCES`` resolves each
kind). ``walk`` turns a body into the list of what it asks for: each power and reference
it sets, with where, and each key the Engine API does not define. The checks then work on
that list, so a field nobody classified cannot be set unseen: the table's test fails on
it first.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import yaml

from plugstrip.proxy.docker_types import Type, definition

HARMLESS, HOLDS, POWER, REF, UNKNOWN = "harmless", "holds", "power", "ref", "unknown"
NAMES, COUNTS, BELONGS = "names", "counts", "belongs"  # in answers
_NAMED = (POWER, REF, NAMES, COUNTS, BELONGS)  # the tags that take a name


@dataclass(frozen=True)
class Class:
    tag: str  # harmless, holds, power, ref; in answers names, counts, belongs
    name: str = ""  # the power's check, the object's kind


@dataclass(frozen=True)
class Hit:
    """One thing a body asks for: a power, a reference, or a key no definition has."""

    tag: str  # power, ref or unknown
    name: str  # the check, the kind, or the unknown key
    value: Any
    parent: Mapping[str, Any]  # the object the field is in: some checks read its siblings
    path: str  # where in the body: "HostConfig.Binds"

    @property
    def field(self) -> str:
        return self.path.rsplit(".", 1)[-1].split("[")[0]


def _parse(text: str, where: str) -> Class:
    tag, _, name = text.partition(" ")
    if (tag in (HARMLESS, HOLDS) and not name) or (tag in _NAMED and name):
        return Class(tag, name)
    raise ValueError(f"{where}: bad class {text!r}")


def _classes(raw: Any, where: str) -> tuple[Class, ...]:
    items = raw if isinstance(raw, list) else [raw]
    return tuple(_parse(str(item), where) for item in items)


@cache
def _raw() -> dict[str, Any]:
    text = files("plugstrip.adapters.policy").joinpath("fields.yaml").read_text("utf-8")
    raw: dict[str, Any] = yaml.safe_load(text)
    return raw


@cache
def table(section: str = "requests") -> dict[str, dict[str, tuple[Class, ...]]]:
    """A section of fields.yaml: definition -> field -> classes. Requests give each field
    its classes; answers give each class its fields (space-separated)."""
    if section == "requests":
        return {
            name: {f: _classes(c, f"requests.{name}.{f}") for f, c in (fields or {}).items()}
            for name, fields in _raw()["requests"].items()
        }
    out: dict[str, dict[str, tuple[Class, ...]]] = {}
    for name, by_class in _raw()[section].items():
        found: dict[str, tuple[Class, ...]] = out.setdefault(name, {})
        for text, names in (by_class or {}).items():
            cls = _parse(text, f"{section}.{name}")
            for field in str(names).split():
                found[field] = (*found.get(field, ()), cls)
    return out


@cache
def build_table() -> dict[str, tuple[Class, ...]]:
    """The build parameters: parameter -> classes."""
    return {k: _classes(c, f"build_query.{k}") for k, c in _raw()["build_query"].items()}


def classes_of(definition_name: str, field: str, section: str = "requests") -> tuple[Class, ...]:
    """The classes of a field where its definition declares it; () if it has none."""
    return table(section).get(definition_name, {}).get(field, ())


def walk(kind: Type, value: Any, path: str = "") -> list[Hit]:
    """What a body of type ``kind`` asks for, in body order."""
    return list(_walk(kind, value, path))


def _walk(kind: Type, value: Any, path: str) -> Iterator[Hit]:
    if not isinstance(kind, dict) or value is None:
        return
    if "list" in kind and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(kind["list"], item, f"{path}[{i}]")
    elif "map" in kind and isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(kind["map"], item, f"{path}[{key}]")
    elif "def" in kind and isinstance(value, dict):
        found = definition(kind["def"])
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if key not in found.fields:
                yield Hit(UNKNOWN, key, item, value, where)
                continue
            if item is None:  # null is Go's zero value: the field is not set
                continue
            for cls in classes_of(found.declared_in[key], key):
                if cls.tag == HOLDS:
                    yield from _walk(found.fields[key], item, where)
                elif cls.tag in (POWER, REF):
                    yield Hit(cls.tag, cls.name, item, value, where)


def build_hits(params: Mapping[str, list[str]]) -> list[Hit]:
    """What a build's query asks for (every value of each parameter: Go reads the first
    or all, depending on the parameter)."""
    hits = []
    for key, values in params.items():  # a parameter the daemon does not read is ignored
        for cls in build_table().get(key, ()):
            if cls.tag in (POWER, REF):
                hits += [Hit(cls.tag, cls.name, v, params, key) for v in values]
    return hits
