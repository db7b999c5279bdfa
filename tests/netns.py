"""Throwaway network namespaces for tests, as CNI's testutils make them."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


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
