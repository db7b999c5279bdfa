"""Helpers shared by the tests: run the docker CLI against a host, wait for things."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
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
