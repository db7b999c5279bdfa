"""The rules people run docker-socket-proxy and sockguard for, as a pre-hook.

::

    adapters:
      policy:
        use: policy
        options:
          read_only: false               # refuse everything but GET and HEAD
          allow: ["GET /**", "POST /containers/*/start"]   # if given: nothing else passes
          deny: ["POST /swarm/**"]       # refused even if allowed
          privileged: false              # containers and execs with Privileged
          host_namespaces: false         # --network/--pid/--ipc/--uts/--userns host
          bind_mounts: ["/srv", "/tmp"]  # host paths binds may use; [] none, omitted: any
    endpoints:
      "* /**": {pre: [policy]}

Every refusal is a 403 whose message names the rule, so ``docker`` prints why.
"""

from __future__ import annotations

import posixpath
from typing import Any

from adapters.contract import Call, Refuse
from proxy.routes import Route

_READ_METHODS = ("GET", "HEAD")
_NAMESPACE_MODES = ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode")
# Calls whose JSON body says how a process will run (privileges, namespaces, mounts).
_CONTAINER_BODIES = (Route.parse("POST /containers/create"), Route.parse("POST /containers/*/exec"))


class PolicyAdapter:
    def __init__(
        self,
        read_only: bool = False,
        allow: list[str] | None = None,
        deny: list[str] | None = None,
        privileged: bool = True,
        host_namespaces: bool = True,
        bind_mounts: list[str] | None = None,
    ) -> None:
        self.read_only = read_only
        self.allow = [Route.parse(r) for r in allow] if allow is not None else None
        self.deny = [Route.parse(r) for r in deny or []]
        self.privileged = privileged
        self.host_namespaces = host_namespaces
        self.bind_mounts = (
            [posixpath.normpath(p) for p in bind_mounts] if bind_mounts is not None else None
        )

    def pre_hook(self, call: Call) -> None:
        req = call.request
        if self.read_only and req.method not in _READ_METHODS:
            _refuse("the Docker API is read-only here")
        if self.allow is not None and not any(r.matches(req.method, req.path) for r in self.allow):
            _refuse(f"{req.method} {req.path} is not in the allow-list")
        for route in self.deny:
            if route.matches(req.method, req.path):
                _refuse(f"{req.method} {req.path} is denied ({route.text})")
        if any(r.matches(req.method, req.path) for r in _CONTAINER_BODIES):
            body = req.json() if req.body else None
            if isinstance(body, dict):
                self._check_container(body)

    def _check_container(self, body: dict[str, Any]) -> None:
        host = body.get("HostConfig") or {}
        if not self.privileged and (body.get("Privileged") or host.get("Privileged")):
            _refuse("privileged containers are not allowed")
        if not self.host_namespaces:
            for key in _NAMESPACE_MODES:
                if str(host.get(key) or "") == "host":
                    _refuse(f"{key}=host is not allowed")
        if self.bind_mounts is not None:
            for source in _bind_sources(host):
                path = posixpath.normpath(source)
                if not self._bind_allowed(path):
                    shown = path if path == source else f"{path} (given as {source})"
                    _refuse(f"bind mount of {shown} is not allowed")

    def _bind_allowed(self, path: str) -> bool:
        assert self.bind_mounts is not None
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.bind_mounts)


def _bind_sources(host: dict[str, Any]) -> list[str]:
    """Host paths from ``Binds`` ("src:dst[:opts]", a name for a volume) and bind ``Mounts``."""
    sources = [b.split(":", 1)[0] for b in host.get("Binds") or [] if isinstance(b, str)]
    sources += [
        str(m.get("Source", ""))
        for m in host.get("Mounts") or []
        if isinstance(m, dict) and m.get("Type") == "bind"
    ]
    return [s for s in sources if s.startswith("/")]


def _refuse(why: str) -> None:
    raise Refuse(403, f"plugstrip policy: {why}")
