"""Raw requests as an attacker writes them, and the daemon's own view of what they did.

A request is sent as bytes (keys in any case, twice, escaped; paths with escapes), so
nothing between the test and plugstrip tidies it up. ``powers`` reads a container's
inspect on the daemon: what the daemon will really grant, whatever the request said.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import posixpath
import socket
from typing import Any


def send(
    sock_path: str,
    method: str,
    target: str,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, Any]:
    """One request on a fresh unix connection; the status and the decoded JSON answer."""
    data = body.encode() if isinstance(body, str) else body
    lines = [f"{method} {target} HTTP/1.1", "Host: docker"]
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    lines += [f"{k}: {v}" for k, v in hdrs.items() if v]
    if data is not None and chunked:
        lines.append("Transfer-Encoding: chunked")
        payload = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(data or b'')}")
        payload = data or b""
    return exchange(sock_path, ("\r\n".join(lines) + "\r\n\r\n").encode() + payload, method)


def exchange(sock_path: str, raw: bytes, method: str = "POST") -> tuple[int, Any]:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    try:
        sock.connect(sock_path)
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        text = response.read()
    finally:
        sock.close()
    try:
        return response.status, json.loads(text) if text else None
    except ValueError:
        return response.status, text.decode(errors="replace")


@functools.cache
def baseline(dockerd: str) -> dict[str, Any]:
    """The HostConfig the daemon gives a container that asked for nothing."""
    sock, name = dockerd.removeprefix("unix://"), f"baseline-{os.getpid()}"
    body = '{"Image":"busybox","Cmd":["true"]}'
    send(sock, "POST", f"/v1.41/containers/create?name={name}", body)
    host: dict[str, Any] = get(sock, f"/v1.41/containers/{name}/json")["HostConfig"]
    send(sock, "DELETE", f"/v1.41/containers/{name}?force=1", headers={"Content-Type": ""})
    return host


def get(sock_path: str, target: str) -> Any:
    status, answer = send(sock_path, "GET", target, headers={"Content-Type": ""})
    return answer if status == 200 else None


# Docker's documented default capabilities (docker run reference), written out here so the
# oracle does not lean on the policy's own list.
_DOCKER_DEFAULT_CAPS = set(
    "AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER FSETID KILL MKNOD NET_BIND_SERVICE NET_RAW SETFCAP"
    " SETGID SETPCAP SETUID SYS_CHROOT".split()
)
_NAMESPACES = ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode")


def powers(
    info: dict[str, Any],
    allowed_root: str,
    volumes: dict[str, Any],
    baseline: dict[str, Any] | None = None,
) -> set[str]:
    """The powers over the host a created container has, from the daemon's inspect, beyond
    what the daemon gives every container (``baseline``: a plain container's HostConfig;
    on cgroup v1 its CgroupnsMode is already host)."""
    host = info["HostConfig"]
    usual = baseline or {}
    found: set[str] = set()
    if host.get("Privileged"):
        found.add("privileged")
    for key in _NAMESPACES:
        if host.get(key) == "host" and usual.get(key) != "host":
            found.add(f"{key}=host")
    for cap in host.get("CapAdd") or []:
        if cap.upper().removeprefix("CAP_") not in _DOCKER_DEFAULT_CAPS:
            found.add(f"CapAdd {cap}")
    for key in ("Devices", "DeviceCgroupRules", "DeviceRequests"):
        if host.get(key):
            found.add(key)
    for opt in host.get("SecurityOpt") or []:
        found.add(f"SecurityOpt {opt}")

    def outside(source: str) -> bool:  # where the mount really leads, on this host
        real = os.path.realpath(posixpath.normpath(source))
        return real != allowed_root and not real.startswith(allowed_root + "/")

    for mount in info.get("Mounts") or []:
        source = mount.get("Source") or ""
        if mount.get("Type") == "bind" and outside(source):
            found.add(f"bind {source}")
        if mount.get("Type") == "volume":
            options = (volumes.get(mount.get("Name")) or {}).get("Options") or {}
            if options.get("device"):
                found.add(f"volume device {options['device']}")
    for bind in host.get("Binds") or []:
        source = bind.split(":", 1)[0]
        if source.startswith("/") and outside(source):
            found.add(f"bind {source}")
    for key in ("PidMode", "NetworkMode", "IpcMode"):
        if str(host.get(key) or "").startswith("container:"):
            found.add(f"{key} join")
    if host.get("CgroupParent"):
        found.add(f"CgroupParent {host['CgroupParent']}")
    if (host.get("OomScoreAdj") or 0) < 0:
        found.add("OomScoreAdj below 0")
    if host.get("OomKillDisable"):
        found.add("OomKillDisable")
    if host.get("Ulimits"):
        found.add("Ulimits")
    for key in host.get("Sysctls") or {}:
        if key.startswith("kernel.") and key not in _IPC_SYSCTLS | _UTS_SYSCTLS:
            found.add(f"Sysctl {key}")
    for key in ("Runtime", "LogConfig", "Isolation"):
        if key in usual and host.get(key) != usual.get(key):
            found.add(f"{key} {host.get(key)}")
    return found


# The kernel.* sysctls a container's IPC and UTS namespaces hold (namespaces(7),
# ipc_namespaces(7)); any other kernel.* is the host's
_IPC_SYSCTLS = set(
    "kernel.msgmax kernel.msgmnb kernel.msgmni kernel.sem kernel.shmall kernel.shmmax"
    " kernel.shmmni kernel.shm_rmid_forced".split()
)
_UTS_SYSCTLS = {"kernel.hostname", "kernel.domainname"}
