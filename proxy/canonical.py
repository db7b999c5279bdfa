"""Requests read as the daemon reads them, before any hook sees them.

dockerd routes on the percent-decoded path (Go's ``URL.Path``, gorilla/mux) and decodes
JSON with Go's encoding/json, which matches object keys to struct fields ignoring case
(Unicode simple folding: the long s, U+017F, is ``s`` and the Kelvin sign is ``k``) and,
for a key given twice, merges or overwrites where Python keeps only the last. A policy
that reads the request any other way can be talked around, so the core does it once, for
every adapter:

- the path is decoded once; an encoded ``/``, a dot segment, a doubled slash, a bad escape
  or a target that is not a plain path is refused (the daemon would route it elsewhere or
  redirect it);
- a JSON body with a key given twice in one object (compared as Go compares it) is refused;
- on the request types Docker defines, keys are given Docker's own spelling, so
  ``body["HostConfig"]["Privileged"]`` is what the daemon will act on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import simplejson


class BadRequest(ValueError):
    """The request cannot be read unambiguously; the client gets a 400 with this message."""


# ---- the path --------------------------------------------------------------------------

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SLASH = re.compile(r"%2[fF]")


def canonical_path(raw: str) -> str:
    """The path as dockerd's router matches it (decoded once), or BadRequest."""
    if not raw.startswith("/"):
        raise BadRequest(f"request target {raw!r} is not a path")
    if "%" in raw:
        if _BAD_ESCAPE.search(raw):
            raise BadRequest(f"invalid percent-escape in path {raw!r}")
        if _ENCODED_SLASH.search(raw):
            raise BadRequest(f"encoded '/' in path {raw!r}")
        try:
            path = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest(f"path {raw!r} is not UTF-8 once decoded") from None
    else:
        path = raw
    if "//" in path:
        raise BadRequest(f"doubled '/' in path {raw!r}")
    if "/." in path and any(seg in (".", "..") for seg in path.split("/")):
        raise BadRequest(f"dot segment in path {raw!r}")
    return path


# ---- JSON bodies -----------------------------------------------------------------------


def fold(key: str) -> str:
    """A key as Go's encoding/json compares it with a field name."""
    return key.translate(_FOLD_TO_ASCII).lower()


_FOLD_TO_ASCII = {0x017F: "s", 0x212A: "k"}  # the two non-ASCII letters that fold to ASCII


@dataclass(frozen=True)
class Struct:
    """A Go struct: keys match its fields as Go matches them and take their spelling."""

    fields: Mapping[str, Schema]
    by_fold: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_fold", {fold(name): name for name in self.fields})


@dataclass(frozen=True)
class MapOf:
    """A Go map: keys are data (labels, options), compared exactly."""

    value: Schema = None


@dataclass(frozen=True)
class ListOf:
    item: Schema = None


# None: a scalar, or a value whose shape is not known (its objects are read fail-closed:
# keys differing only in case count as the same key).
Schema = Struct | MapOf | ListOf | None


def struct(scalars: str = "", /, **nested: Schema) -> Struct:
    """``struct("Image User", HostConfig=...)``: scalar fields by name, the rest by schema."""
    return Struct({**dict.fromkeys(scalars.split()), **nested})


class _Pairs(list[tuple[str, Any]]):
    """A JSON object before it is checked: its members in order, duplicates and all."""


def read_json(body: bytes, schema: Schema = None) -> Any:
    """Parse ``body`` as the daemon will: one JSON value, no key twice in an object, keys
    of known structs in Docker's spelling. Numbers keep their exact value (Decimal)."""
    try:
        raw = simplejson.loads(body, use_decimal=True, object_pairs_hook=_Pairs)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not one JSON value: {exc}") from None
    return _canonical(raw, schema, "")


def _canonical(value: Any, schema: Schema, where: str) -> Any:
    if isinstance(value, _Pairs):
        return _object(value, schema, where)
    if isinstance(value, list):
        item = schema.item if isinstance(schema, ListOf) else None
        return [_canonical(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _object(pairs: _Pairs, schema: Schema, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in pairs:
        if isinstance(schema, MapOf):
            name, same, sub = key, key, schema.value
        elif isinstance(schema, Struct):
            same = fold(key)
            name = schema.by_fold.get(same, key)
            sub = schema.fields.get(name)
        else:
            name, same, sub = key, fold(key), None
        if same in seen:
            first = seen[same]
            also = "" if first == key else f", also as {first!r}"
            raise BadRequest(f"request body gives key {_at(where, key)!r} twice{also}")
        seen[same] = key
        out[name] = _canonical(value, sub, _at(where, name))
    return out


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
