"""One rule set of the policy: which routes a client may call and which powers over the
host its requests may ask for, on every route that grants them.

Bodies arrive read as the daemon reads them (``plugstrip.proxy.canonical``: Docker's key
spelling, no duplicate keys) and are walked with the policy's field table
(``fields.walk``): every power a body sets is checked by its check in ``powers.POWERS``,
under the option that governs it; a key the Engine API does not define is refused when the
rule set says ``unknown_fields: refuse``. Every refusal is a 403 naming the rule.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qs

from plugstrip.adapters.policy.fields import POWER, UNKNOWN, Hit, build_hits, walk
from plugstrip.adapters.policy.powers import (
    POWERS,
    Context,
    Daemon,
    Denied,
    Grant,
    Lookup,
    cap_name,
    refuse,
)
from plugstrip.proxy.contract import split_version
from plugstrip.proxy.docker_types import VERSION, body_type, glob, served
from plugstrip.proxy.routes import Route

__all__ = ["INSPECT", "Daemon", "Rules", "refuse"]

_FILLED_PATHS = ("MaskedPaths", "ReadonlyPaths")  # inspect shows the daemon's defaults
_READ_METHODS = ("GET", "HEAD")
# The rules whose powers a container keeps: a shell in it has them (exec, attach, cp in)
_INSIDE_RULES = frozenset(
    "privileged host_namespaces cap_add devices security_opt bind_mounts".split()
)
_HOST_CONFIG = {"def": "HostConfig"}


def _routes(*texts: str) -> tuple[Route, ...]:
    return tuple(Route.parse(t) for t in texts)


# cp out; HEAD (a path's stat) stays: cp into a container asks it first.
_ARCHIVE = _routes("GET /containers/*/archive")
_EXPORT = _routes("GET /containers/*/export")
_LOGS = _routes("GET /containers/*/logs")
_ATTACH = _routes("POST /containers/*/attach", "GET /containers/*/attach/ws")
_SWARM = _routes("POST /swarm/**", "DELETE /swarm/**")
_PLUGINS = _routes("POST /plugins/**", "DELETE /plugins/**")
_SERVICES = _routes("POST /services/create", "POST /services/*/update")
BUILD = Route.parse("POST /build")
INSPECT = Route.parse("GET /containers/*/json")
# Calls that work inside a container that exists: its powers become the caller's (a shell
# in a privileged container is root on the host).
INTO = _routes(
    "POST /containers/*/exec",
    "POST /containers/*/attach",
    "GET /containers/*/attach/ws",
    "PUT /containers/*/archive",
)


def _allow_entry(method: str, path: str) -> str:
    """The allow-list entry for a call: the daemon's route for it (any object), else the
    path itself."""
    route = served(method, path)
    return glob(route.route) if route else f"{method} {split_version(path)[1]}"


def _any(routes: Iterable[Route], method: str, path: str) -> bool:
    return any(r.matches(method, path) for r in routes)


@dataclass
class Rules:
    """The options of one rule set; see README's policy table for each and its default."""

    read_only: bool = False
    allow: list[str] | None = None
    deny: list[str] = field(default_factory=list)
    privileged: bool = False
    host_namespaces: bool = False
    cap_add: list[str] = field(default_factory=list)
    devices: bool = False
    security_opt: bool = False
    bind_mounts: list[str] | None = field(default_factory=list)
    exec_root: bool = False
    cgroup_parent: list[str] = field(default_factory=list)
    sysctls: list[str] = field(default_factory=list)
    host_resources: bool = False
    runtimes: list[str] = field(default_factory=list)
    log_drivers: list[str] = field(default_factory=lambda: ["json-file", "local", "none"])
    network_drivers: list[str] = field(default_factory=list)
    unknown_fields: str | None = None  # refuse or allow; None: refuse with ownership
    services: bool = False
    swarm: bool = False
    plugins: bool = False
    archive: bool = True
    export: bool = True
    logs: bool = True
    attach: bool = True
    env: bool = True
    see_all: bool = False
    unrestricted: bool = False  # an empty rule set: everything, as with no policy
    _allow: list[Route] | None = field(default=None, init=False, repr=False)
    _deny: list[Route] = field(default_factory=list, init=False, repr=False)
    allowed_caps: set[str] = field(default_factory=set, init=False, repr=False)
    roots: list[str] | None = field(default=None, init=False, repr=False)  # None: any
    real_roots: list[str] = field(default_factory=list, init=False, repr=False)
    _scopes: dict[str, list[tuple[Route, str, str]]] = field(
        default_factory=dict, init=False, repr=False
    )

    @classmethod
    def from_options(cls, options: dict[str, Any], where: str = "rules") -> Rules:
        known = {f.name for f in fields(cls) if f.init} - {"unrestricted"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)}")
        for name, value in options.items():
            _check_type(name, value, where)
        rules = cls(**options, unrestricted=not options)
        rules._allow = [Route.parse(r) for r in rules.allow] if rules.allow is not None else None
        rules._deny = [Route.parse(r) for r in rules.deny]
        rules.allowed_caps = {cap_name(c) for c in rules.cap_add}
        for option, routes, what in (
            ("archive", _ARCHIVE, "copying files out of containers"),
            ("export", _EXPORT, "exporting containers"),
            ("logs", _LOGS, "reading container logs"),
            ("attach", _ATTACH, "attaching to containers"),
            ("swarm", _SWARM, "managing the swarm"),
            ("plugins", _PLUGINS, "installing or changing plugins"),
            ("services", _SERVICES, "creating or updating services"),
        ):
            for route in routes if not getattr(rules, option) else ():
                # by the path's first segment: most calls look at no route at all
                section = route.text.split()[1].split("/")[1]
                rules._scopes.setdefault(section, []).append((route, option, what))
        if rules.bind_mounts is not None:  # a path as given and where its links lead
            given = [posixpath.normpath(p) for p in rules.bind_mounts]
            rules.real_roots = [os.path.realpath(p) for p in given]
            rules.roots = sorted({*given, *rules.real_roots})
        return rules

    def options(self) -> dict[str, Any]:
        """The options that differ from the defaults, as the configuration gives them."""
        default = Rules()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.init
            and f.name != "unrestricted"
            and getattr(self, f.name) != getattr(default, f.name)
        }

    def widened(self, grant: Grant) -> Rules:
        """This rule set, also allowing what ``grant`` names."""
        option, value = grant
        options = self.options()
        if option in _LISTS:
            have = options.get(option, getattr(self, option)) or []
            options[option] = have if value in have else [*have, value]
        else:
            options[option] = value
        return Rules.from_options(options)

    # ---- routes ------------------------------------------------------------------------

    def check_route(self, method: str, path: str, query: str) -> None:
        if self.unrestricted:
            return
        if self.read_only and method not in _READ_METHODS:
            refuse("the Docker API is read-only here")
        if self._allow is not None and not _any(self._allow, method, path):
            grant = ("allow", _allow_entry(method, path))
            refuse(f"{method} {path} is not in the allow-list", grant)
        for route in self._deny:
            if route.matches(method, path):
                refuse(f"{method} {path} is denied ({route.text})")
        _, rest = split_version(path)
        section = rest.split("/", 2)[1] if rest.count("/") else ""
        for route, option, what in self._scopes.get(section, ()):
            if route.matches(method, path):
                refuse(f"{what} is not allowed", (option, True))

    def query_hits(self, method: str, path: str, query: str) -> list[Hit]:
        """What a build's parameters ask for (the only query the policy reads)."""
        if self.unrestricted or not BUILD.matches(method, path):
            return []
        return build_hits(parse_qs(query, keep_blank_values=True))

    def hits(self, method: str, path: str, query: str, body: Any) -> list[Hit]:
        """What a request asks for: its build parameters, and its body walked by its type."""
        asked = self.query_hits(method, path, query)
        kind = body_type(method, path) if body is not None else None
        return asked if kind is None else [*asked, *walk(kind, body)]

    async def check_asked(
        self, method: str, path: str, hits: list[Hit], body: Any, daemon: Daemon | None
    ) -> None:
        """Everything but the route: the container a call acts inside, then every power."""
        if self.acts_inside(method, path):
            await self.check_inside(path, daemon)
        await self.check_powers(hits, Context(Lookup(daemon), path, body))

    def acts_inside(self, method: str, path: str) -> bool:
        return not self.unrestricted and _any(INTO, method, path)

    async def check_inside(self, path: str, daemon: Daemon | None) -> None:
        """Exec, attach and copy into a container are refused when the container has a
        power this client could not have asked for at create (one an operator made, say).
        CgroupnsMode is left out: on cgroup v1 the daemon gives every container host."""
        name = split_version(path)[1].split("/")[2]
        look = Lookup(daemon)
        info = await look.container(name)
        if info is None:
            return  # the daemon answers: no such container
        host = {
            k: v
            for k, v in (info.get("HostConfig") or {}).items()
            # the daemon fills these in for every container: only an emptied one is a power
            if k != "CgroupnsMode" and not (k in _FILLED_PATHS and v)
        }
        hits = [
            hit
            for hit in walk(_HOST_CONFIG, host)
            if hit.tag == POWER and POWERS[hit.name].rule in _INSIDE_RULES
        ]
        try:
            await self.check_powers(hits, Context(look, path, {"HostConfig": host}))
        except Denied as refusal:
            why = refusal.message.removeprefix("plugstrip policy: ")
            refuse(f"container {name} has a power this client may not use ({why})", refusal.grant)

    # ---- bodies ------------------------------------------------------------------------

    async def check_powers(self, hits: Iterable[Hit], ctx: Context) -> None:
        """Every power the hits ask for, by its check; unknown keys by ``unknown_fields``."""
        if self.unrestricted:
            return
        for hit in hits:
            if hit.tag == POWER:
                await POWERS[hit.name].check(self, hit, ctx)
            elif hit.tag == UNKNOWN and self.unknown_fields == "refuse" and hit.value:
                # a zero value (0, "", false, null, [], {}) is what Go decodes for an absent
                # field: newer clients send their newer fields so (the docker CLI 28 sends
                # EndpointsConfig's GwPriority: 0 to a 1.41 daemon)
                why = f"{hit.path} is not a field of this request in Engine API {VERSION}"
                refuse(why, ("unknown_fields", "allow"))


_LISTS = {
    "allow",
    "deny",
    "cap_add",
    "bind_mounts",
    "cgroup_parent",
    "sysctls",
    "runtimes",
    "log_drivers",
    "network_drivers",
}
_MAY_BE_NULL = {"allow", "bind_mounts", "unknown_fields"}
_CHOICES = {"unknown_fields": ("refuse", "allow")}


def _check_type(name: str, value: Any, where: str) -> None:
    if value is None and name in _MAY_BE_NULL:
        return
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise ValueError(f"{where}.{name}: expected one of {', '.join(_CHOICES[name])}")
    elif name in _LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where}.{name}: expected a list of strings, got {value!r}")
    elif not isinstance(value, bool):
        raise ValueError(f"{where}.{name}: expected true or false, got {value!r}")
