"""One rule set of the policy: which routes a client may call and which powers over the
host its requests may ask for, on every route that grants them.

Bodies arrive read as the daemon reads them (``plugstrip.proxy.canonical``: Docker's key spelling,
no duplicate keys). Where a power depends on something already on the daemon (a named
volume's driver options, the container a ``container:<id>`` mode or ``VolumesFrom``
names, a user name in a container's ``/etc/passwd``) the daemon is asked (``Daemon``), so
the answer is the one it will act on. Every refusal is a 403 naming the rule.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol
from urllib.parse import parse_qs, quote

from plugstrip.proxy.contract import Refuse, split_version
from plugstrip.proxy.routes import Route

# Docker's default capability set (moby oci/caps/defaults.go): adding these grants nothing.
DEFAULT_CAPS = frozenset(
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_FSETID CAP_FOWNER CAP_MKNOD CAP_NET_RAW CAP_SETGID"
    " CAP_SETUID CAP_SETFCAP CAP_SETPCAP CAP_NET_BIND_SERVICE CAP_SYS_CHROOT CAP_KILL"
    " CAP_AUDIT_WRITE".split()
)
_NAMESPACES = ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode")
_JOINABLE = ("NetworkMode", "PidMode", "IpcMode")  # may be "container:<id>"
_FILLED_PATHS = ("MaskedPaths", "ReadonlyPaths")  # inspect shows the daemon's defaults
_DEVICE_FIELDS = ("Devices", "DeviceCgroupRules", "DeviceRequests")
_READ_METHODS = ("GET", "HEAD")


class Daemon(Protocol):
    """What the rules ask the daemon (``plugstrip.proxy.docker_api.DockerApi`` answers)."""

    async def call(self, method: str, path: str, ok_missing: bool = False) -> Any: ...

    async def raw(self, path: str) -> bytes | None: ...


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
CREATE = Route.parse("POST /containers/create")
EXEC_CREATE = Route.parse("POST /containers/*/exec")
UPDATE = Route.parse("POST /containers/*/update")
VOLUME_CREATE = Route.parse("POST /volumes/create")
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
    _caps: set[str] = field(default_factory=set, init=False, repr=False)
    _roots: list[str] | None = field(default=None, init=False, repr=False)
    _scopes: dict[str, list[tuple[Route, str]]] = field(
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
        rules._caps = {_cap(c) for c in rules.cap_add}
        for allowed, routes, what in (
            (rules.archive, _ARCHIVE, "copying files out of containers"),
            (rules.export, _EXPORT, "exporting containers"),
            (rules.logs, _LOGS, "reading container logs"),
            (rules.attach, _ATTACH, "attaching to containers"),
            (rules.swarm, _SWARM, "managing the swarm"),
            (rules.plugins, _PLUGINS, "installing or changing plugins"),
            (rules.services, _SERVICES, "creating or updating services"),
        ):
            for route in routes if not allowed else ():
                # by the path's first segment: most calls look at no route at all
                section = route.text.split()[1].split("/")[1]
                rules._scopes.setdefault(section, []).append((route, what))
        rules._roots = (
            None
            if rules.bind_mounts is None
            else [os.path.realpath(posixpath.normpath(p)) for p in rules.bind_mounts]
        )
        return rules

    # ---- routes ------------------------------------------------------------------------

    def check_route(self, method: str, path: str, query: str) -> None:
        if self.unrestricted:
            return
        if self.read_only and method not in _READ_METHODS:
            refuse("the Docker API is read-only here")
        if self._allow is not None and not _any(self._allow, method, path):
            refuse(f"{method} {path} is not in the allow-list")
        for route in self._deny:
            if route.matches(method, path):
                refuse(f"{method} {path} is denied ({route.text})")
        _, rest = split_version(path)
        section = rest.split("/", 2)[1] if rest.count("/") else ""
        for route, what in self._scopes.get(section, ()):
            if route.matches(method, path):
                refuse(f"{what} is not allowed")
        if section == "build" and BUILD.matches(method, path):
            self._check_build(query)

    def _check_build(self, query: str) -> None:
        # Go's r.FormValue: the first value of an exactly spelled key.
        mode = (parse_qs(query).get("networkmode") or [""])[0]
        if not self.host_namespaces and _is_host_or_join(mode):
            refuse(f"building with networkmode={mode} is not allowed")

    def acts_inside(self, method: str, path: str) -> bool:
        return not self.unrestricted and _any(INTO, method, path)

    async def check_inside(self, path: str, daemon: Daemon | None) -> None:
        """Exec, attach and copy into a container are refused when the container has a
        power this client could not have asked for at create (one an operator made, say).
        CgroupnsMode is left out: on cgroup v1 the daemon gives every container host."""
        name = split_version(path)[1].split("/")[2]
        look = _Lookup(daemon)
        info = await look.container(name)
        if info is None:
            return  # the daemon answers: no such container
        host = {
            k: v
            for k, v in (info.get("HostConfig") or {}).items()
            # the daemon fills these in for every container: only an emptied one is a power
            if k != "CgroupnsMode" and not (k in _FILLED_PATHS and v)
        }
        try:
            await self._check_host(host, look)
        except Refuse as refusal:
            why = refusal.message.removeprefix("plugstrip policy: ")
            refuse(f"container {name} has a power this client may not use ({why})")

    # ---- bodies ------------------------------------------------------------------------

    async def check_body(self, method: str, path: str, body: Any, daemon: Daemon | None) -> None:
        if self.unrestricted or not isinstance(body, dict):
            return
        look = _Lookup(daemon)
        if CREATE.matches(method, path):
            await self._check_create(body, look)
        elif EXEC_CREATE.matches(method, path):
            await self._check_exec(path, body, look)
        elif UPDATE.matches(method, path):
            self._check_devices(body)
        elif VOLUME_CREATE.matches(method, path):
            self._check_volume(str(body.get("Driver") or "local"), body.get("DriverOpts"), "")
        elif _any(_SERVICES, method, path):
            await self._check_service(body, look)

    async def _check_create(self, body: dict[str, Any], look: _Lookup) -> None:
        # 20.10 reads HostConfig fields at the top level too (used when no HostConfig is
        # given): both are checked.
        for host in (body, body.get("HostConfig")):
            if isinstance(host, dict):
                await self._check_host(host, look)

    async def _check_host(self, host: dict[str, Any], look: _Lookup) -> None:
        if not self.privileged and host.get("Privileged"):
            refuse("privileged containers are not allowed")
        if not self.host_namespaces:
            for key in _NAMESPACES:
                mode = str(host.get(key) or "")
                if mode.lower() == "host":
                    refuse(f"{key}={mode} is not allowed")
                if key in _JOINABLE and mode.startswith("container:"):
                    await self._check_join(key, mode.partition(":")[2], look)
        self._check_caps(_strings(host.get("CapAdd")), "CapAdd")
        self._check_caps(_strings(host.get("Capabilities")), "Capabilities")
        self._check_devices(host)
        if not self.security_opt:
            for opt in _strings(host.get("SecurityOpt")):
                _check_security_opt(opt)
            for key in ("MaskedPaths", "ReadonlyPaths"):
                if host.get(key) is not None:
                    refuse(f"setting {key} is not allowed")
        for bind in _strings(host.get("Binds")):
            source = bind.split(":", 1)[0]
            if source.startswith("/"):
                self._check_path(source, "bind mount")
            else:
                await self._check_named_volume(source, look)
        for mount in host.get("Mounts") or []:
            if isinstance(mount, dict):
                await self._check_mount(mount, look)
        for source in _strings(host.get("VolumesFrom")):
            await self._check_volumes_from(source.split(":", 1)[0], look)

    async def _check_join(self, key: str, target: str, look: _Lookup, depth: int = 0) -> None:
        """``container:<id>`` shares that container's namespace: it is as powerful as the
        namespace is."""
        info = await look.container(target)
        if info is None:
            return  # the daemon will refuse: no such container
        host = info.get("HostConfig") or {}
        mode = str(host.get(key) or "")
        if mode == "host" or (key == "PidMode" and host.get("Privileged")):
            refuse(f"{key}=container:{target} joins a container with host powers")
        if mode.startswith("container:") and depth < 8:
            await self._check_join(key, mode.partition(":")[2], look, depth + 1)

    def _check_caps(self, caps: list[str], key: str) -> None:
        for cap in caps:
            name = _cap(cap)
            if name == "ALL" and "ALL" not in self._caps:
                refuse(f"{key} ALL is not allowed")
            if name != "ALL" and name not in DEFAULT_CAPS and name not in self._caps:
                refuse(f"{key} {cap} is not allowed")

    def _check_devices(self, host: dict[str, Any]) -> None:
        if self.devices:
            return
        for key in _DEVICE_FIELDS:
            if host.get(key):
                refuse(f"{key} (host devices) are not allowed")

    async def _check_mount(self, mount: dict[str, Any], look: _Lookup) -> None:
        kind = str(mount.get("Type") or "").lower()
        source = str(mount.get("Source") or "")
        if kind == "bind":
            self._check_path(source, "bind mount")
        elif kind == "volume":
            options = mount.get("VolumeOptions") or {}
            driver = (options.get("DriverConfig") or {}) if isinstance(options, dict) else {}
            if isinstance(driver, dict) and driver.get("Options"):
                self._check_volume(str(driver.get("Name") or "local"), driver["Options"], source)
            if source:
                await self._check_named_volume(source, look)

    async def _check_named_volume(self, name: str, look: _Lookup) -> None:
        info = await look.volume(name)
        if info is not None:
            self._check_volume(str(info.get("Driver") or ""), info.get("Options"), name)

    def _check_volume(self, driver: str, options: Any, name: str) -> None:
        """A local volume with a ``device`` mounts it: a host path when ``o`` has bind,
        else a block device or a remote filesystem."""
        if driver != "local" or not isinstance(options, dict) or not options.get("device"):
            return
        device = str(options["device"])
        flags = {f.strip() for f in str(options.get("o") or "").split(",")}
        what = f"local volume {name}" if name else "a local volume"
        if {"bind", "rbind"} & flags:
            self._check_path(device, f"{what} binding")
        elif not self.devices:
            refuse(f"{what} mounting device {device} is not allowed")

    async def _check_volumes_from(self, target: str, look: _Lookup) -> None:
        info = await look.container(target)
        for mount in (info or {}).get("Mounts") or []:
            if mount.get("Type") == "bind":
                self._check_path(str(mount.get("Source") or ""), f"VolumesFrom {target}: bind")
            elif mount.get("Type") == "volume" and mount.get("Name"):
                await self._check_named_volume(str(mount["Name"]), look)

    def _check_path(self, source: str, what: str) -> None:
        """A host path after ``..`` is resolved and after the host's symlinks are: the daemon
        mounts what the path leads to."""
        if self._roots is None:
            return
        clean = posixpath.normpath(source)
        real = os.path.realpath(clean)
        for path in (clean, real):
            if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in self._roots):
                shown = source if path == source else f"{path} (given as {source})"
                refuse(f"{what} of {shown} is not allowed")

    async def _check_exec(self, path: str, body: dict[str, Any], look: _Lookup) -> None:
        if not self.privileged and body.get("Privileged"):
            refuse("privileged execs are not allowed")
        user = str(body.get("User") or "").partition(":")[0]
        if self.exec_root or not user:
            return
        container = path.split("/")[-2]
        if (user.isdigit() and int(user) == 0) or user == "root":
            refuse(f"exec as root (User {body['User']}) is not allowed")
        if not user.isdigit() and await look.uid_in(container, user) == 0:
            refuse(f"exec as {user}, uid 0 in the container, is not allowed")

    async def _check_service(self, body: dict[str, Any], look: _Lookup) -> None:
        task = body.get("TaskTemplate") or {}
        spec = task.get("ContainerSpec") or {} if isinstance(task, dict) else {}
        if not isinstance(spec, dict):
            return
        self._check_caps(_strings(spec.get("CapabilityAdd")), "CapabilityAdd")
        for mount in spec.get("Mounts") or []:
            if isinstance(mount, dict):
                await self._check_mount(mount, look)
        selinux = (spec.get("Privileges") or {}).get("SELinuxContext") or {}
        if not self.security_opt and isinstance(selinux, dict) and selinux.get("Disable"):
            refuse("services with SELinux disabled are not allowed")
        networks = [*(task.get("Networks") or []), *(body.get("Networks") or [])]
        for net in networks:
            if not self.host_namespaces and isinstance(net, dict) and net.get("Target") == "host":
                refuse("services on the host network are not allowed")


class _Lookup:
    """The daemon's view of objects a request names, asked once per request."""

    def __init__(self, daemon: Daemon | None) -> None:
        self._daemon = daemon

    def _need(self) -> Daemon:
        if self._daemon is None:
            refuse("the policy cannot ask the daemon, so it cannot check this request")
        assert self._daemon is not None
        return self._daemon

    async def container(self, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self._need().call(
            "GET", f"/containers/{quote(name, safe='')}/json", ok_missing=True
        )
        return found

    async def volume(self, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self._need().call(
            "GET", f"/volumes/{quote(name, safe='')}", ok_missing=True
        )
        return found

    async def uid_in(self, container: str, user: str) -> int | None:
        """The uid ``user`` has in the container's /etc/passwd, as runc will look it up."""
        path = f"/containers/{quote(container, safe='')}/archive?path=/etc/passwd"
        data = await self._need().raw(path)
        if data is None:
            return None
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                member = tar.extractfile(tar.getmembers()[0])
                text = member.read().decode(errors="replace") if member else ""
        except (tarfile.TarError, IndexError):
            return None
        for line in text.splitlines():
            parts = line.split(":")
            if len(parts) > 2 and parts[0] == user and parts[2].isdigit():
                return int(parts[2])
        return None


_LISTS = {"allow", "deny", "cap_add", "bind_mounts"}
_MAY_BE_NULL = {"allow", "bind_mounts"}


def _check_type(name: str, value: Any, where: str) -> None:
    if value is None and name in _MAY_BE_NULL:
        return
    if name in _LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where}.{name}: expected a list of strings, got {value!r}")
    elif not isinstance(value, bool):
        raise ValueError(f"{where}.{name}: expected true or false, got {value!r}")


def _check_security_opt(opt: str) -> None:
    """Options that weaken confinement: seccomp or AppArmor off, custom seccomp profiles,
    SELinux labels off or a super-privileged type, /proc unmasked, no-new-privileges off."""
    # "key=value", or the older "key:value"
    key, _, value = opt.partition("=") if "=" in opt else opt.partition(":")
    key, low = key.strip().lower(), value.strip().lower()
    weak = (
        (key == "seccomp" and low not in ("", "default"))
        or (key == "apparmor" and low == "unconfined")
        or (key == "label" and (low == "disable" or low.startswith("type:spc")))
        or (key == "systempaths" and low == "unconfined")
        or (key == "no-new-privileges" and low in ("false", "0"))
    )
    if weak:
        refuse(f"SecurityOpt {opt[:80]} is not allowed")


def _is_host_or_join(mode: str) -> bool:
    return mode.lower() == "host" or mode.startswith("container:")


def _cap(name: str) -> str:
    """Docker's spelling: upper case with the CAP_ prefix (``ALL`` stays ``ALL``)."""
    upper = name.strip().upper()
    return upper if upper == "ALL" or upper.startswith("CAP_") else f"CAP_{upper}"


def _strings(value: Any) -> list[str]:
    """A Go ``StrSlice`` (one string or a list) or ``[]string``, as strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if v is not None]
    return []


def refuse(why: str) -> None:
    raise Refuse(403, f"plugstrip policy: {why}")
