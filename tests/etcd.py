"""A private etcd for tests, on loopback, with its data in a throwaway directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness import free_port, wait_for


@contextmanager
def etcd_server(workdir: Path, netns: str | None = None) -> Iterator[str]:
    """Start etcd (in namespace ``netns``, a path, if given); yields its
    ``etcd://127.0.0.1:PORT`` URL, valid in that namespace."""
    if shutil.which("etcd") is None:
        raise RuntimeError("etcd is not installed: run ./scripts/test (it installs etcd-server)")
    client, peer = free_port(), free_port()
    enter = ["nsenter", f"--net={netns}"] if netns else []
    proc = subprocess.Popen(
        [
            *enter,
            "etcd",
            "--data-dir",
            str(workdir / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{client}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{client}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{peer}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "etcd.log").open("w"),
    )
    try:
        wait_for(lambda: _healthy(client, enter), 30, "etcd did not start")
        yield f"etcd://127.0.0.1:{client}"
    finally:
        proc.terminate()
        proc.wait(10)


def _healthy(port: int, enter: list[str]) -> bool:
    """etcd's /health, asked from the namespace it listens in."""
    probe = (
        "import json, urllib.request; "
        f"print(json.load(urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=2)))"
    )
    out = subprocess.run([*enter, sys.executable, "-c", probe], capture_output=True, text=True)
    return "'health': 'true'" in out.stdout
