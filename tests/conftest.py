"""Real parts for the tests: a private dockerd with a local busybox image, and plugstrip
itself started as the `plugstrip serve` command users run."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import harness


@pytest.fixture(scope="session")
def dockerd() -> Iterator[str]:
    """A dockerd of our own (never the machine's), with busybox:latest imported."""
    if shutil.which("dockerd") is None:
        pytest.fail("dockerd is not installed: run .ci/run (it installs docker.io)")
    root = Path(tempfile.mkdtemp(prefix="ps-dockerd-"))
    sock = root / "docker.sock"
    log = (root / "dockerd.log").open("w")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--host",
            f"unix://{sock}",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "docker.pid"),
            "--bridge",
            "none",
            "--iptables=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    host = f"unix://{sock}"
    try:
        harness.wait_for(
            lambda: harness.docker(host, "info", check=False).returncode == 0,
            60,
            "dockerd did not start",
        )
        harness.make_busybox_image(host, root)
        yield host
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Plugstrip:
    host: str  # DOCKER_HOST for clients
    socket: str
    admin: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen[bytes]
    workdir: Path
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            return self.proc.wait(timeout)
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_plugstrip(
    upstream: str, workdir: Path, config: str | None = None, extra: list[str] | None = None
) -> Plugstrip:
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "plugstrip.sock"
    port = free_port()
    args = [
        "plugstrip",
        "serve",
        "--listen",
        f"unix://{sock}",
        "--upstream",
        upstream,
        "--state-dir",
        str(workdir / "state"),
        "--admin",
        f"tcp://127.0.0.1:{port}",
        "--shutdown-timeout",
        "3",
    ]
    if config is not None:
        cfg = workdir / "adapters.yml"
        cfg.write_text(config)
        args += ["--config", str(cfg)]
    args += extra or []
    log = workdir / "plugstrip.log"
    # tests.sample_adapters must be importable, as a user's own adapter package would be
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env)
    ps = Plugstrip(f"unix://{sock}", str(sock), f"http://127.0.0.1:{port}", proc, workdir, log)
    harness.wait_for(lambda: sock.exists() or proc.poll() is not None, 20, "no socket")
    if proc.poll() is not None:
        raise RuntimeError(f"plugstrip exited: {log.read_text()}")
    return ps


@pytest.fixture
def plugstrip_factory(dockerd: str, tmp_path: Path) -> Iterator[object]:
    started: list[Plugstrip] = []

    def factory(
        config: str | None = None, extra: list[str] | None = None, name: str = "ps"
    ) -> Plugstrip:
        ps = start_plugstrip(dockerd, tmp_path / name, config, extra)
        started.append(ps)
        return ps

    yield factory
    for ps in started:
        try:
            ps.stop()
        except subprocess.TimeoutExpired:
            ps.proc.kill()


@pytest.fixture
def proxy(plugstrip_factory: object) -> Plugstrip:
    """plugstrip with no adapters: pure pass-through."""
    return plugstrip_factory()  # type: ignore[operator,no-any-return]


@pytest.fixture(autouse=True)
def _no_docker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests name their daemon explicitly; never the machine's.
    for var in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(var, raising=False)
    os.environ.setdefault("DOCKER_BUILDKIT", "0")
