"""A private etcd for tests, with its data in a throwaway directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.harness import free_port, wait_for


class EtcdServer:
    """etcd on ``address`` (in namespace ``netns``, a path, if given); stopped and started
    again on the same ports and data, as an operator restarting it."""

    def __init__(self, workdir: Path, netns: str | None = None, address: str = "127.0.0.1"):
        if shutil.which("etcd") is None:
            raise RuntimeError("no etcd: run ./scripts/test (it installs etcd-server)")
        self.workdir = workdir
        self.address = address
        self.client, self.peer = free_port(), free_port()
        self.enter = ["nsenter", f"--net={netns}"] if netns else []
        self.url = f"etcd://{address}:{self.client}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        client, peer = f"http://{self.address}:{self.client}", f"http://127.0.0.1:{self.peer}"
        self.proc = subprocess.Popen(
            [
                *self.enter,
                "etcd",
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"default={peer}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "etcd.log").open("a"),
        )
        wait_for(self.healthy, 30, "etcd did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def served(self) -> tuple[float, float]:
        """Read (range) requests served and bytes sent to clients so far: etcd's metrics."""
        url = f"http://{self.address}:{self.client}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        ranges = sent = 0.0
        for line in text.splitlines():
            if line.startswith("grpc_server_handled_total") and 'grpc_method="Range"' in line:
                ranges += float(line.rsplit(" ", 1)[1])
            elif line.startswith("etcd_network_client_grpc_sent_bytes_total"):
                sent += float(line.rsplit(" ", 1)[1])
        return ranges, sent

    def healthy(self) -> bool:
        """etcd's /health, asked from the namespace it listens in."""
        probe = (
            "import json, urllib.request; print(json.load(urllib.request.urlopen("
            f"'http://{self.address}:{self.client}/health', timeout=2)))"
        )
        command = [*self.enter, sys.executable, "-c", probe]
        out = subprocess.run(command, capture_output=True, text=True)
        return "'health': 'true'" in out.stdout


@contextmanager
def etcd_server(
    workdir: Path, netns: str | None = None, address: str = "127.0.0.1"
) -> Iterator[str]:
    """A started etcd; yields its ``etcd://ADDRESS:PORT`` URL."""
    server = EtcdServer(workdir, netns, address)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
