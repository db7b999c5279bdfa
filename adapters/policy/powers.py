"""The checks of every power a field may ask for (``power CHECK`` in fields.yaml), each with
the rule that governs it.

A check gets one ``Hit`` (the field's value, the object it is in, where) and the request's
``Context``; it refuses with a 403 naming the rule, or returns. Where the answer depends on
something already on the daemon (a named volume's options, the container a
``container:<id>`` mode or ``VolumesFrom`` names, the container's ``/etc/passwd``) it asks
the daemon, so the answer is the one the daemon will act on. Where plugstrip cannot tell
what the daemon will do with a value, the value is refused.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol
from urllib.parse import quote

from plugstrip.adapters.policy.fields import Hit
from plugstrip.adapters.policy.runc import exec_uid, go_atoi, sysctl_namespace
from plugstrip.proxy.contract import Refuse, split_version

if TYPE_CHECKING:
    from plugstrip.adapters.policy.rules import Rules

# Docker's default capability set (moby oci/caps/defaults.go): adding these grants nothing.
DEFAULT_CAPS = frozenset(
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_FSETID CAP_FOWNER CAP_MKNOD CAP_NET_RAW CAP_SETGID"
    " CAP_SETUID CAP_SETFCAP CAP_SETPCAP CAP_NET_BIND_SERVICE CAP_SYS_CHROOT CAP_KILL"
    " CAP_AUDIT_WRITE".split()
)
# Network drivers that take nothing of the host's (macvlan and ipvlan take an interface)
SAFE_NETWORK_DRIVERS = ("", "bridge", "overlay", "plugstrip/weave", "plugstrip/ovs")
# Driver options that hand a network the host's own devices
_HOST_NETWORK_OPTIONS = ("com.docker.network.bridge.name", "parent")
_HOST_NAMESPACES = ("host_namespaces", True)
_SECURITY_OPT = ("security_opt", True)
_HOST_RESOURCES = ("host_resources", True)


class Daemon(Protocol):
    """What the checks ask the daemon (``plugstrip.proxy.docker_api.DockerApi`` answers)."""

    async def call(self, method: str, path: str, *, ok_missing: bool = False) -> Any: ...

    async def raw(self, path: str) -> bytes | None: ...


# What would have allowed a refused request: an option of Rules and the value it takes
# (a list option gets the value added). Learn mode widens a rule set by it.
Grant = tuple[str, Any]


class Denied(Refuse):
    """A 403 by a rule, with its grant (None: no option allows it, as a ``deny`` entry)."""

    def __init__(self, why: str, grant: Grant | None) -> None:
        super().__init__(403, f"plugstrip policy: {why}")
        self.grant = grant


def refuse(why: str, grant: Grant | None = None) -> NoReturn:
    raise Denied(why, grant)


class Lookup:
    """The daemon's view of objects a request names, for one request."""

    def __init__(self, daemon: Daemon | None) -> None:
        self._daemon = daemon

    def need(self) -> Daemon:
        if self._daemon is None:
            refuse("the policy cannot ask the daemon, so it cannot check this request")
        return self._daemon

    async def container(self, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self.need().call(
            "GET", f"/containers/{quote(name, safe='')}/json", ok_missing=True
        )
        return found

    async def volume(self, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self.need().call(
            "GET", f"/volumes/{quote(name, safe='')}", ok_missing=True
        )
        return found

    async def passwd(self, container: str) -> str | None:
        """The container's /etc/passwd as runc will read it, None if it has none."""
        path = f"/containers/{quote(container, safe='')}/archive?path=/etc/passwd"
        data = await self.need().raw(path)
        if data is None:
            return None
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                member = tar.extractfile(tar.getmembers()[0])
                return member.read().decode(errors="replace") if member else None
        except (tarfile.TarError, IndexError):
            return None


@dataclass(frozen=True)
class Context:
    """What a check knows of the request besides the field."""

    look: Lookup
    path: str  # the request's path (an exec's container is in it)
    body: Any  # the whole body (a sysctl's network namespace is another field)


Check = Callable[["Rules", Hit, Context], Awaitable[None]]


@dataclass(frozen=True)
class Power:
    rule: str  # the option of Rules that governs it
    check: Check


POWERS: dict[str, Power] = {}


def power(name: str, rule: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        POWERS[name] = Power(rule, check)
        return check

    return register


def strings(value: Any) -> list[str]:
    """A Go ``StrSlice`` (one string or a list) or ``[]string``, as strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if v is not None]
    return []


# ---- privileges, namespaces, capabilities, devices, confinement ---------------------------


def _when_set(rule: str, why: str) -> Check:
    """A power asked for by any value but the zero one, refused unless ``rule`` is on;
    ``why`` may name the field (``{field}``)."""

    async def check(rules: Rules, hit: Hit, ctx: Context) -> None:
        if hit.value and not getattr(rules, rule):
            refuse(why.format(field=hit.field), (rule, True))

    return check


power("privileged", "privileged")(_when_set("privileged", "privileged containers are not allowed"))
power("privileged_exec", "privileged")(_when_set("privileged", "privileged execs are not allowed"))
power("devices", "devices")(_when_set("devices", "{field} (host devices) are not allowed"))
power("selinux_disable", "security_opt")(
    _when_set("security_opt", "services with SELinux disabled are not allowed")
)
# the swarm's and plugins' own fields: the route's rule governs them all (a zero value,
# Ingress: false, asks nothing)
power("swarm", "swarm")(_when_set("swarm", "managing the swarm is not allowed"))
power("plugins", "plugins")(_when_set("plugins", "installing or changing plugins is not allowed"))


@power("namespace", "host_namespaces")
async def _namespace(rules: Rules, hit: Hit, ctx: Context) -> None:
    mode = str(hit.value)
    if rules.host_namespaces or not mode:
        return
    if mode.lower() == "host":
        refuse(f"{hit.field}={mode} is not allowed", _HOST_NAMESPACES)
    if mode.startswith("container:"):
        await _check_join(hit.field, mode.partition(":")[2], ctx.look)


async def _check_join(key: str, target: str, look: Lookup, depth: int = 0) -> None:
    """``container:<id>`` shares that container's namespace: it is as powerful as the
    namespace is, followed through chains."""
    info = await look.container(target)
    if info is None:
        return  # the daemon will refuse: no such container
    host = info.get("HostConfig") or {}
    mode = str(host.get(key) or "")
    if mode == "host" or (key == "PidMode" and host.get("Privileged")):
        refuse(f"{key}=container:{target} joins a container with host powers", _HOST_NAMESPACES)
    if mode.startswith("container:") and depth < 8:
        await _check_join(key, mode.partition(":")[2], look, depth + 1)


@power("caps", "cap_add")
async def _caps(rules: Rules, hit: Hit, ctx: Context) -> None:
    allowed = rules.allowed_caps
    for cap in strings(hit.value):
        name = cap_name(cap)
        if name == "ALL" and "ALL" not in allowed:
            refuse(f"{hit.field} ALL is not allowed", ("cap_add", "ALL"))
        if name != "ALL" and name not in DEFAULT_CAPS and name not in allowed:
            refuse(f"{hit.field} {cap} is not allowed", ("cap_add", name.removeprefix("CAP_")))


def cap_name(name: str) -> str:
    """Docker's spelling: upper case with the CAP_ prefix (``ALL`` stays ``ALL``)."""
    upper = name.strip().upper()
    return upper if upper == "ALL" or upper.startswith("CAP_") else f"CAP_{upper}"


@power("security_opt", "security_opt")
async def _security_opt(rules: Rules, hit: Hit, ctx: Context) -> None:
    """Options that weaken confinement: seccomp or AppArmor off, custom seccomp profiles,
    SELinux labels off or a super-privileged type, /proc unmasked, no-new-privileges off."""
    if rules.security_opt:
        return
    for opt in strings(hit.value):
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
            refuse(f"SecurityOpt {opt[:80]} is not allowed", _SECURITY_OPT)


@power("masked_paths", "security_opt")
async def _masked_paths(rules: Rules, hit: Hit, ctx: Context) -> None:
    if not rules.security_opt:
        refuse(f"setting {hit.field} is not allowed", _SECURITY_OPT)


@power("selinux_type", "security_opt")
async def _selinux_type(rules: Rules, hit: Hit, ctx: Context) -> None:
    if str(hit.value).strip().lower().startswith("spc") and not rules.security_opt:
        refuse(f"the SELinux type {hit.value} is not allowed", _SECURITY_OPT)


# ---- host paths and volumes ------------------------------------------------------------


@power("binds", "bind_mounts")
async def _binds(rules: Rules, hit: Hit, ctx: Context) -> None:
    for bind in strings(hit.value):
        source = bind.split(":", 1)[0]
        if source.startswith("/"):
            check_path(rules, source, "bind mount")
        else:
            await _named_volume(rules, source, ctx.look)


@power("mount_source", "bind_mounts")
async def _mount_source(rules: Rules, hit: Hit, ctx: Context) -> None:
    kind = str(hit.parent.get("Type") or "").lower()
    if kind == "bind":
        check_path(rules, str(hit.value), "bind mount")
    elif kind == "volume" and hit.value:
        await _named_volume(rules, str(hit.value), ctx.look)


@power("volume_options", "bind_mounts")
async def _volume_options(rules: Rules, hit: Hit, ctx: Context) -> None:
    _check_volume(rules, str(hit.parent.get("Name") or "local"), hit.value, "")


@power("volume_create_options", "bind_mounts")
async def _volume_create_options(rules: Rules, hit: Hit, ctx: Context) -> None:
    _check_volume(rules, str(hit.parent.get("Driver") or "local"), hit.value, "")


@power("volumes_from", "bind_mounts")
async def _volumes_from(rules: Rules, hit: Hit, ctx: Context) -> None:
    for source in strings(hit.value):
        target = source.split(":", 1)[0]
        info = await ctx.look.container(target)
        for mount in (info or {}).get("Mounts") or []:
            if mount.get("Type") == "bind":
                where = f"VolumesFrom {target}: bind"
                check_path(rules, str(mount.get("Source") or ""), where)
            elif mount.get("Type") == "volume" and mount.get("Name"):
                await _named_volume(rules, str(mount["Name"]), ctx.look)


async def _named_volume(rules: Rules, name: str, look: Lookup) -> None:
    info = await look.volume(name)
    if info is not None:
        _check_volume(rules, str(info.get("Driver") or ""), info.get("Options"), name)


def _check_volume(rules: Rules, driver: str, options: Any, name: str) -> None:
    """A local volume with a ``device`` mounts it: a host path when ``o`` has bind,
    else a block device or a remote filesystem."""
    if driver != "local" or not isinstance(options, dict) or not options.get("device"):
        return
    device = str(options["device"])
    flags = {f.strip() for f in str(options.get("o") or "").split(",")}
    what = f"local volume {name}" if name else "a local volume"
    if {"bind", "rbind"} & flags:
        check_path(rules, device, f"{what} binding")
    elif not rules.devices:
        refuse(f"{what} mounting device {device} is not allowed", ("devices", True))


def check_path(rules: Rules, source: str, what: str) -> None:
    """A host path, after ``..`` is resolved, under an allowed root as the root was given or
    where its links lead; and where the path's own links lead, under where the roots' lead:
    the daemon mounts what the path leads to."""
    if rules.roots is None:
        return
    clean = posixpath.normpath(source)
    real = os.path.realpath(clean)
    for path, roots in ((clean, rules.roots), (real, rules.real_roots)):
        if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
            shown = source if path == source else f"{path} (given as {source})"
            refuse(f"{what} of {shown} is not allowed", ("bind_mounts", path))


# ---- users -----------------------------------------------------------------------------


@power("exec_user", "exec_root")
async def _exec_user(rules: Rules, hit: Hit, ctx: Context) -> None:
    """As dockerd resolves it with runc's library: a sign or zeros on a number, an empty
    user before a group (the default, root) and names in the container's passwd."""
    spec = str(hit.value)
    if rules.exec_root or spec == "":
        return  # "": the container's own user, as it was created
    user = spec.split(":")[0]
    passwd = None
    if user and go_atoi(user) is None:  # a name: the container's passwd gives its uid
        passwd = await ctx.look.passwd(split_version(ctx.path)[1].split("/")[2])
    if exec_uid(spec, passwd) == 0:
        refuse(f"exec as {spec}, uid 0 in the container, is not allowed", ("exec_root", True))


# ---- the host's resources and its kernel -----------------------------------------------


@power("cgroup_parent", "cgroup_parent")
async def _cgroup_parent(rules: Rules, hit: Hit, ctx: Context) -> None:
    parent = str(hit.value)
    if not parent:
        return
    clean = posixpath.normpath("/" + parent.strip("/"))  # systemd slices have no slash
    for prefix in rules.cgroup_parent:
        root = posixpath.normpath("/" + prefix.strip("/"))
        if clean == root or clean.startswith(root.rstrip("/") + "/"):
            return
    refuse(f"CgroupParent {parent} is not allowed", ("cgroup_parent", clean))


@power("sysctls", "sysctls")
async def _sysctls(rules: Rules, hit: Hit, ctx: Context) -> None:
    if not isinstance(hit.value, dict):
        return
    host_net = "host" in _network_modes(ctx.body)
    for key in hit.value:
        namespace = sysctl_namespace(str(key))
        if namespace is None or (namespace == "net" and host_net):
            if not any(str(key).replace("/", ".").startswith(p) for p in rules.sysctls):
                grant = ("sysctls", str(key).replace("/", "."))
                refuse(f"the sysctl {key} is the host's, not the container's", grant)


def _network_modes(body: Any) -> set[str]:
    """NetworkMode where a create body may give it (20.10 reads it at the top level too)."""
    if not isinstance(body, dict):
        return set()
    host = body.get("HostConfig")
    inner = host.get("NetworkMode") if isinstance(host, dict) else None
    return {str(mode).lower() for mode in (inner, body.get("NetworkMode")) if mode}


def _host_resources(what: str) -> Check:
    async def check(rules: Rules, hit: Hit, ctx: Context) -> None:
        if not rules.host_resources and _asks(hit):
            refuse(f"{what} ({hit.field}) is not allowed", _HOST_RESOURCES)

    return check


def _asks(hit: Hit) -> bool:
    """Whether a host-resource field asks for more than the default."""
    value = hit.value
    if hit.field == "OomScoreAdj":
        return isinstance(value, int | float) and value < 0
    if hit.field == "ulimits" and isinstance(value, str):  # build: a JSON list
        try:
            return bool(json.loads(value or "[]"))
        except ValueError:
            return True
    return bool(value)


power("oom_score_adj", "host_resources")(_host_resources("a negative OOM score"))
power("oom_kill_disable", "host_resources")(_host_resources("disabling the OOM killer"))
power("realtime", "host_resources")(_host_resources("real-time CPU time"))
power("ulimits", "host_resources")(_host_resources("setting ulimits"))
power("storage_opt", "host_resources")(_host_resources("storage driver options"))


@power("isolation", "host_resources")
async def _isolation(rules: Rules, hit: Hit, ctx: Context) -> None:
    if str(hit.value).lower() not in ("", "default") and not rules.host_resources:
        refuse(f"Isolation {hit.value} is not allowed", _HOST_RESOURCES)


@power("runtime", "runtimes")
async def _runtime(rules: Rules, hit: Hit, ctx: Context) -> None:
    if str(hit.value) not in ("", "runc", *rules.runtimes):
        refuse(f"the runtime {hit.value} is not allowed", ("runtimes", str(hit.value)))


@power("log_driver", "log_drivers")
async def _log_driver(rules: Rules, hit: Hit, ctx: Context) -> None:
    if str(hit.value) not in ("", *rules.log_drivers):
        refuse(f"the log driver {hit.value} is not allowed", ("log_drivers", str(hit.value)))


# ---- networks ---------------------------------------------------------------------------


@power("network_driver", "network_drivers")
async def _network_driver(rules: Rules, hit: Hit, ctx: Context) -> None:
    if str(hit.value) not in (*SAFE_NETWORK_DRIVERS, *rules.network_drivers):
        grant = ("network_drivers", str(hit.value))
        refuse(f"the network driver {hit.value} is not allowed", grant)


@power("network_options", "host_namespaces")
async def _network_options(rules: Rules, hit: Hit, ctx: Context) -> None:
    if rules.host_namespaces or not isinstance(hit.value, dict):
        return
    for key in hit.value:
        if key in _HOST_NETWORK_OPTIONS:
            refuse(f"the network option {key} (a host device) is not allowed", _HOST_NAMESPACES)


@power("service_network", "host_namespaces")
async def _service_network(rules: Rules, hit: Hit, ctx: Context) -> None:
    if str(hit.value) == "host" and not rules.host_namespaces:
        refuse("services on the host network are not allowed", _HOST_NAMESPACES)


@power("build_network", "host_namespaces")
async def _build_network(rules: Rules, hit: Hit, ctx: Context) -> None:
    mode = str(hit.value)
    if not rules.host_namespaces and (mode.lower() == "host" or mode.startswith("container:")):
        refuse(f"building with networkmode={mode} is not allowed", _HOST_NAMESPACES)
