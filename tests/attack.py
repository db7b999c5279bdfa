"""Raw requests as an attacker writes them, and the daemon's own view of what they did.

A request is sent as bytes (keys in any case, twice, escaped; paths with escapes), so
nothing between the test and plugstrip tidies it up. ``powers`` reads a container's
inspect on the daemon: what the daemon will really grant, whatever the request said.
"""

from __future__ import annotations

import http.client
import json
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


def get(sock_path: str, target: str) -> Any:
    status, answer = send(sock_path, "GET", target, headers={"Content-Type": ""})
    return answer if status == 200 else None


_NAMESPACES = ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode")


def powers(info: dict[str, Any], allowed_root: str, volumes: dict[str, Any]) -> set[str]:
    """The powers over the host a created container has, from the daemon's inspect."""
    host = info["HostConfig"]
    found: set[str] = set()
    if host.get("Privileged"):
        found.add("privileged")
    for key in _NAMESPACES:
        if host.get(key) == "host":
            found.add(f"{key}=host")
    if host.get("CapAdd"):
        found.add("CapAdd")
    for key in ("Devices", "DeviceCgroupRules", "DeviceRequests"):
        if host.get(key):
            found.add(key)
    for opt in host.get("SecurityOpt") or []:
        found.add(f"SecurityOpt {opt}")
    for mount in info.get("Mounts") or []:
        source = posixpath.normpath(mount.get("Source") or "")
        if mount.get("Type") == "bind" and not source.startswith(allowed_root):
            found.add(f"bind {source}")
        if mount.get("Type") == "volume":
            options = (volumes.get(mount.get("Name")) or {}).get("Options") or {}
            if options.get("device"):
                found.add(f"volume device {options['device']}")
    for bind in host.get("Binds") or []:
        source = posixpath.normpath(bind.split(":", 1)[0])
        if source.startswith("/") and not source.startswith(allowed_root):
            found.add(f"bind {source}")
    for key in ("PidMode", "NetworkMode", "IpcMode"):
        if str(host.get(key) or "").startswith("container:"):
            found.add(f"{key} join")
    return found
