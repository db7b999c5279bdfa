"""Helpers shared by the tests: run the docker CLI against a host, wait for things."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def docker(
    host: str,
    *args: str,
    input: bytes | None = None,
    check: bool = True,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    full_env = {**os.environ, "DOCKER_HOST": host, "DOCKER_CLI_HINTS": "false", **(env or {})}
    proc = subprocess.run(
        ["docker", *args], input=input, capture_output=True, timeout=timeout, env=full_env
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')}"
        )
    return proc


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


def start_dockerd(root: Path, netns: str | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """A private dockerd under ``root`` (never the machine's), with busybox:latest. In the
    machine's namespace it runs without a bridge or iptables rules (it must not touch the
    machine's networking); in a test "host" namespace (a path), it runs as a real host's:
    default bridge, iptables, port publishing."""
    if shutil.which("dockerd") is None:
        raise RuntimeError("dockerd is not installed: run ./scripts/test (it installs docker.io)")
    sock = root / "docker.sock"
    log = (root / "dockerd.log").open("w")
    isolated = [] if netns else ["--bridge", "none", "--iptables=false"]
    enter = ["nsenter", f"--net={netns}"] if netns else []
    proc = subprocess.Popen(
        [
            *enter,
            "dockerd",
            "--host",
            f"unix://{sock}",
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "docker.pid"),
            *isolated,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    host = f"unix://{sock}"
    try:
        wait_for(
            lambda: docker(host, "info", check=False).returncode == 0, 60, "dockerd did not start"
        )
        if docker(host, "image", "inspect", "busybox:latest", check=False).returncode != 0:
            make_busybox_image(host, root)
    except BaseException:
        stop_dockerd(proc)
        raise
    return host, proc


def stop_dockerd(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def unmount_under(root: Path) -> None:
    """Lazily unmount what is still mounted below ``root`` (deepest first), so the
    directory can go: a stopped dockerd can leave its netns bind mount behind."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        targets = [line.split()[1] for line in mounts]
    for target in sorted((t for t in targets if t.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def make_busybox_image(host: str, workdir: Path) -> None:
    """busybox:latest from Debian's busybox-static (no registry is reachable here)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is not installed: run .ci/run (it installs busybox-static)")
    root = workdir / "busybox-root"
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "tmp", "etc", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    applets = subprocess.run(
        [busybox, "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = root / applet
        if not link.exists():
            link.symlink_to("/bin/busybox")
    (root / "bin/busybox").unlink(missing_ok=True)  # a link from the loop, not the binary
    shutil.copy(busybox, root / "bin/busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "tmp").chmod(0o1777)
    tar = workdir / "busybox.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    docker(host, "import", "-c", 'CMD ["/bin/sh"]', str(tar), "busybox:latest")


# The command of the environment running the tests (and benchmarks), not whichever
# plugstrip comes first on PATH.
_HERE_FIRST = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
PLUGSTRIP = shutil.which("plugstrip", path=_HERE_FIRST) or "plugstrip"


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
    upstream: str,
    workdir: Path,
    config: str | None = None,
    extra: list[str] | None = None,
    netns: str | None = None,
    env: dict[str, str] | None = None,
    command: tuple[str, ...] = ("serve",),
) -> Plugstrip:
    """``plugstrip serve`` (or ``command``, which serves) in front of ``upstream``; in
    namespace ``netns`` (a path) if given, as it runs beside the daemon of a test "host";
    ``env`` adds to its environment."""
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "plugstrip.sock"
    port = free_port()
    args = [
        *(["nsenter", f"--net={netns}"] if netns else []),
        PLUGSTRIP,
        *command,
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
    full_env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        **(env or {}),
    }
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=full_env)
    ps = Plugstrip(f"unix://{sock}", str(sock), f"http://127.0.0.1:{port}", proc, workdir, log)
    wait_for(lambda: sock.exists() or proc.poll() is not None, 20, "no socket")
    if proc.poll() is not None:
        raise RuntimeError(f"plugstrip exited: {log.read_text()}")
    return ps
