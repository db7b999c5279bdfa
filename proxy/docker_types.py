"""The Engine API's request bodies and the answers the policy reads (API 1.41, moby
v20.10.24), as the daemon decodes them.

``engine_api.json`` beside this module is derived from the Engine API's own swagger by
``scripts/engine-api-schema`` (with the few places where moby's Go types, which do the
decoding, differ from it): every field of every body, typed, by definition. From it come
the schemas the core reads bodies with (``body_schema``: which fields are structs, whose
keys match as Go matches them, and which are maps, whose keys are data) and the types the
policy walks (``body_type``, ``answer_type``, ``definition``). Nothing here is a list of
fields written by hand: a new API version is the script run on its swagger.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from plugstrip.proxy.canonical import ListOf, MapOf, Schema, Struct
from plugstrip.proxy.routes import Route

# A field's type: "string", "integer", "number", "boolean", "any", {"def": NAME},
# {"list": TYPE} or {"map": TYPE}.
Type = Any

API: dict[str, Any] = json.loads(
    files("plugstrip.proxy").joinpath("engine_api.json").read_text(encoding="utf-8")
)
VERSION: str = API["version"]


@dataclass(frozen=True)
class Definition:
    """A Go struct: its fields with those of the structs it embeds (Go promotes them), and
    for each the definition that declares it (where its class is written)."""

    name: str
    fields: Mapping[str, Type]
    declared_in: Mapping[str, str]


@cache
def definition(name: str) -> Definition:
    entry = API["definitions"][name]
    fields: dict[str, Type] = {}
    declared: dict[str, str] = {}
    for base in entry.get("embeds", ()):
        embedded = definition(base)
        fields.update(embedded.fields)
        declared.update(embedded.declared_in)
    fields.update(entry["fields"])  # a field of the struct itself shadows a promoted one
    declared.update(dict.fromkeys(entry["fields"], name))
    return Definition(name, fields, declared)


def _routes(table: Mapping[str, Type]) -> tuple[tuple[Route, Type], ...]:
    out = []
    for text, kind in table.items():
        method, path = text.split()
        segments = ["*" if s.startswith("{") else s for s in path.split("/")]
        out.append((Route.parse(f"{method} {'/'.join(segments)}"), kind))
    return tuple(out)


_REQUESTS = _routes(API["requests"])
_ANSWERS = _routes(API["answers"])


def _find(table: tuple[tuple[Route, Type], ...], method: str, path: str) -> Type | None:
    for route, kind in table:
        if route.matches(method, path):
            return kind
    return None


def body_type(method: str, path: str) -> Type | None:
    """The type of a request's JSON body, None where Docker defines none."""
    if method.upper() != "POST":  # every JSON body Docker defines comes with a POST
        return None
    return _find(_REQUESTS, method, path)


def answer_type(method: str, path: str) -> Type | None:
    """The type of a successful answer, for the answers the policy reads."""
    return _find(_ANSWERS, method, path)


@cache
def _schema_of_def(name: str) -> Struct:
    return Struct({f: schema_of(t) for f, t in definition(name).fields.items()})


def schema_of(kind: Type) -> Schema:
    """The canonical reader's schema for a type (None: a scalar, or any shape)."""
    if isinstance(kind, dict):
        if "def" in kind:
            return _schema_of_def(kind["def"])
        if "list" in kind:
            return ListOf(schema_of(kind["list"]))
        if "map" in kind:
            return MapOf(schema_of(kind["map"]))
    return None


def body_schema(method: str, path: str) -> Schema:
    """The schema of a request's JSON body, None where Docker defines none."""
    kind = body_type(method, path)
    return None if kind is None else schema_of(kind)


CONTAINER_CREATE = body_schema("POST", "/containers/create")
