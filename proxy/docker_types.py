"""The Engine API's routes, request bodies and the answers the policy reads (API 1.41, moby
v20.10.24), as the daemon routes and decodes them.

``engine_api.json`` beside this module is derived from moby's source by
``scripts/engine-api-schema``: every route the daemon's router serves, with its handler
(``served``: which one a call reaches, as the router matches), and from the Engine API's
swagger (with the few places where moby's Go types, which do the decoding, differ from it)
every field of every body, typed, by definition. From it come
the schemas the core reads bodies with (``body_schema``: which fields are structs, whose
keys match as Go matches them, and which are maps, whose keys are data) and the types the
policy walks (``body_type``, ``answer_type``, ``definition``). Nothing here is a list of
fields or routes written by hand: a new API version is the script run on its source.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from plugstrip.proxy.canonical import ListOf, MapOf, Schema, Struct
from plugstrip.proxy.contract import split_version

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


def glob(route: str) -> str:
    """A router route (``GET /containers/{name:.*}/json``) as plugstrip's route pattern
    (``GET /containers/**/json``): a parameter with a pattern may take slashes."""
    return _PARAM.sub(lambda m: "**" if ":" in m.group(0) else "*", route)


_PARAM = re.compile(r"\{[^}]*\}")


@dataclass(frozen=True)
class Served:
    """A route the daemon serves, as its router writes it, with its handler (two routes
    with one handler are one operation: ``GET /networks`` and ``GET /networks/``) and, for
    one call, what its parameters matched (the object's name or id)."""

    route: str
    handler: str
    params: tuple[str, ...] = ()


def _regex(path: str) -> re.Pattern[str]:
    """gorilla/mux's matching: ``{name}`` one segment, ``{name:RE}`` that expression."""
    out, end = [], 0
    for m in _PARAM.finditer(path):
        _, _, pattern = m.group(0)[1:-1].partition(":")
        out += [re.escape(path[end : m.start()]), f"({pattern or '[^/]+'})"]
        end = m.end()
    return re.compile("".join([*out, re.escape(path[end:])]))


def _served_by_section() -> dict[tuple[str, str], tuple[tuple[re.Pattern[str], Served], ...]]:
    """The router's routes by method and first path segment, in the router's order."""
    table: dict[tuple[str, str], list[tuple[re.Pattern[str], Served]]] = {}
    for route, handler in API["routes"].items():
        method, path = route.split()
        entry = (_regex(path), Served(route, handler))
        section = _section(path)  # a parameter there (OPTIONS /{anyroute:.*}): any
        table.setdefault((method, "*" if "{" in section else section), []).append(entry)
    return {key: tuple(routes) for key, routes in table.items()}


def _section(rest: str) -> str:
    return rest.split("/", 2)[1] if rest.count("/") else ""


_SERVED = _served_by_section()
# the bodies' and answers' types by the handler that reads or writes them
_BY_HANDLER: dict[str, dict[str, Type]] = {
    table: {API["routes"][route]: kind for route, kind in API[table].items()}
    for table in ("requests", "answers")
}


def served(method: str, path: str) -> Served | None:
    """The route the daemon serves this call with (its router's first match) and what
    the route's parameters matched; None when it serves none (it answers 404)."""
    rest, method = split_version(path)[1], method.upper()
    for regex, route in (
        *_SERVED.get((method, _section(rest)), ()),
        *_SERVED.get((method, "*"), ()),
    ):
        found = regex.fullmatch(rest)
        if found is not None:
            return Served(route.route, route.handler, found.groups())
    return None


def _find(table: str, method: str, path: str) -> Type | None:
    route = served(method, path)
    return None if route is None else _BY_HANDLER[table].get(route.handler)


def body_type(method: str, path: str) -> Type | None:
    """The type of a request's JSON body, None where Docker defines none."""
    if method.upper() != "POST":  # every JSON body Docker defines comes with a POST
        return None
    return _find("requests", method, path)


def answer_type(method: str, path: str) -> Type | None:
    """The type of a successful answer, for the answers the policy reads."""
    return _find("answers", method, path)


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
