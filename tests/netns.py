"""Throwaway network namespaces for tests, as CNI's testutils make them."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from netaddr import IPAddress

from plugstrip.netdrivers.domain.contract import Endpoint, Network


@contextmanager
def namespaces(count: int) -> Iterator[list[str]]:
    """``count`` new namespaces (names under /var/run/netns), deleted afterwards."""
    names = [f"pst-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
            subprocess.run(["ip", "-n", n, "link", "set", "lo", "up"], check=True)
        yield names
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], check=False)


def path(name: str) -> str:
    return f"/var/run/netns/{name}"


def run(ns: str, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout
    )


def endpoint(net: Network, ns: str, host: int, name: str) -> Endpoint:
    """Container ``name`` in namespace ``ns`` at host number ``host`` of ``net``."""
    return Endpoint(
        net.id,
        name,
        IPAddress(net.subnet.first + host),
        net.subnet.prefixlen,
        f"02:42:{net.vni >> 8:02x}:{net.vni & 0xFF:02x}:00:{host:02x}",
        path(ns),
        gateway=IPAddress(net.subnet.first + 1),
    )


def ping(ns: str, address: IPAddress) -> bool:
    """One ICMP echo from namespace ``ns`` (busybox: the host may have no ping)."""
    return run(ns, "busybox", "ping", "-c", "1", "-W", "2", str(address)).returncode == 0
