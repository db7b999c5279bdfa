"""Network-holder containers: one per container on plugstrip networks.

A holder is a ``catatonit -P`` pause process whose network namespace plugstrip wires up
(addresses, routes, names) *before* the user's container exists; the user's container then
joins it with ``NetworkMode: container:<holder>``, so its entrypoint starts with every
interface up (no race with the application, no wrapper in the image). Kubernetes' pause
container is the same idea. The holder also carries what Docker ties to the network
namespace and refuses on a joined container (published ports, DNS, hostname, extra hosts,
links): those settings move from the user's request to the holder, so they work as asked.
The holder sits on Docker's default bridge (outbound traffic and ``-p`` through dockerd as
usual) unless every plugstrip network it serves is internal.
"""

from __future__ import annotations

import io
import secrets
import shutil
import tarfile
from collections.abc import Sequence
from typing import Any

from plugstrip.netdrivers.control import dns
from plugstrip.proxy.docker_api import DockerApi

IMAGE_REPO = "plugstrip/holder"
IMAGE_TAG = "1"
IMAGE = f"{IMAGE_REPO}:{IMAGE_TAG}"

# Labels: on a holder, its role; on a user's container, its holder and the network mode
# the user asked for (shown back in inspect and ps instead of ``container:<holder>``).
LABEL_PREFIX = "io.plugstrip."  # every label below: a container without one is not ours
ROLE = "io.plugstrip.role"
HOLDER = "io.plugstrip.holder"
NETWORK_MODE = "io.plugstrip.network-mode"
DNS = "io.plugstrip.dns"  # on a holder: the user's --dns, the upstreams of its name server
NAME_PREFIX = "plugstrip-holder-"
NETWORK_GROUPS = "security-groups"  # a plugstrip network's one driver option
# On a user's container: the security groups its endpoints are in (comma-separated); a
# network's ``--opt security-groups=...`` are its endpoints' otherwise.
SECURITY_GROUPS = "io.plugstrip.security-groups"
# On a user's container: addresses its endpoints may send from besides their own (a VIP
# keepalived moves between containers), each one of its network's --aux-address
ALLOWED_ADDRESSES = "io.plugstrip.allowed-addresses"

# What Docker refuses beside ``container:`` network mode, and so moves to the holder.
MOVED_CONFIG = ("Hostname", "Domainname", "ExposedPorts")
MOVED_HOST_CONFIG = (
    "PortBindings",
    "PublishAllPorts",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "Links",
)


class HolderUnavailable(RuntimeError):
    pass


async def ensure_image(api: DockerApi) -> None:
    """Import the holder image from the host's catatonit if the daemon lacks it."""
    if await api.call("GET", f"/images/{IMAGE}/json", ok_missing=True) is not None:
        return
    binary = shutil.which("catatonit")
    if binary is None:
        raise HolderUnavailable(
            "plugstrip needs catatonit for network-holder containers (apt install catatonit)"
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(binary, arcname="catatonit")
    await api.call(
        "POST",
        "/images/create",
        params={
            "fromSrc": "-",
            "repo": IMAGE_REPO,
            "tag": IMAGE_TAG,
            "changes": 'CMD ["/catatonit", "-P"]',
        },
        data=buf.getvalue(),
    )


def plain_request(on_bridge: bool) -> dict[str, Any]:
    """A holder's create request when the user's container moved nothing to it: the
    request spare holders (:mod:`plugstrip.adapters.network.holder_pool`) are made with."""
    return {
        "Image": IMAGE,
        "Labels": {ROLE: "holder", DNS: ""},
        "HostConfig": {
            "NetworkMode": "default" if on_bridge else "none",
            "RestartPolicy": {"Name": "always"},  # back with the daemon, before its user
            # Names are answered in the holder (netdrivers.dns), the user's --dns servers
            # (in the DNS label) are its upstreams.
            "Dns": [dns.ADDRESS],
        },
    }


def split_request(
    body: dict[str, Any],
    network_mode: str,
    on_bridge: bool,
    dockers: Sequence[tuple[str, dict[str, Any]]] = (),
) -> dict[str, Any]:
    """Rewrite a create request to join a holder (``container:HOLDER`` is filled in by
    :func:`join`) and return the holder's own create request, carrying what moved. On
    ``dockers`` (a Docker network and its endpoint config) the holder joins that network
    instead of the default bridge."""
    host_config = body.setdefault("HostConfig", {}) or {}
    body["HostConfig"] = host_config
    holder = plain_request(on_bridge)
    holder_host = holder["HostConfig"]
    for network, config in dockers:
        holder_host["NetworkMode"] = network
        holder["NetworkingConfig"] = {"EndpointsConfig": {network: config}}
    for key in MOVED_CONFIG:
        if body.get(key):
            holder[key] = body.pop(key)
        else:
            body.pop(key, None)
    for key in MOVED_HOST_CONFIG:
        if host_config.get(key):
            value = host_config.pop(key)
            if key == "Dns":
                holder["Labels"][DNS] = ",".join(value)
            else:
                holder_host[key] = value
        else:
            host_config.pop(key, None)
    body["NetworkingConfig"] = None
    body["Labels"] = {**(body.get("Labels") or {}), NETWORK_MODE: network_mode}
    return holder


def holder_of(info: dict[str, Any]) -> str | None:
    """The holder of a container (an inspect), if it has one."""
    hid = ((info.get("Config") or {}).get("Labels") or {}).get(HOLDER)
    return str(hid) if hid else None


def listed(text: str | None) -> list[str]:
    """A label's or a network option's comma-separated list (security groups, addresses)."""
    return [g.strip() for g in (text or "").split(",") if g.strip()]


def docker_endpoint(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A Docker network's endpoint config for a holder: the container's, with its name
    among the aliases, so Docker's resolver answers it with the holder's address."""
    aliases = [str(a) for a in config.get("Aliases") or []]
    if name and name not in aliases:
        aliases.append(name)
    return {**config, "Aliases": aliases}


def join(body: dict[str, Any], holder_id: str) -> None:
    body["HostConfig"]["NetworkMode"] = f"container:{holder_id}"
    body["Labels"][HOLDER] = holder_id


def new_name() -> str:
    return f"{NAME_PREFIX}{secrets.token_hex(6)}"
