"""compose.yml as users run it: validated by docker-compose, then built (from a Debian base
and wheels prepared on the host by scripts/install-deps: no network inside the build) and
started on a test host's dockerd, and a container driven through the plugstrip inside."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import harness
from tests.dockerhost import DockerHost, docker_host
from tests.harness import free_port, wait_for

pytestmark = pytest.mark.system  # namespaces, devices, daemons or installs of its own

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path("/var/cache/plugstrip")
CONTEXT = ("pyproject.toml", "README.md", "proxy", "adapters", "netdrivers", "cli")
BUILD = ("Dockerfile", ".dockerignore", "compose.yml", "compose.caps.yml")


def compose(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
    )


def test_compose_file_validates() -> None:
    caps = compose(
        {}, "-f", str(ROOT / "compose.yml"), "-f", str(ROOT / "compose.caps.yml"), "config"
    )
    assert caps.returncode == 0, caps.stderr
    assert "NET_ADMIN" in yaml.safe_load(caps.stdout)["services"]["plugstrip"]["cap_add"]
    out = compose({}, "-f", str(ROOT / "compose.yml"), "config")
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    plugstrip = services["plugstrip"]
    assert (plugstrip["network_mode"], plugstrip["pid"], plugstrip["privileged"]) == (
        "host",
        "host",
        True,
    )
    mounts = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in plugstrip["volumes"]]
    assert {"/var/run/docker.sock", "/var/lib/plugstrip", "/run/plugstrip"} <= set(mounts)
    assert services["etcd"]["profiles"] == ["etcd"]  # started only when asked for


@pytest.fixture(scope="module")
def bare_host() -> Iterator[DockerHost]:
    """A test host with no plugstrip of its own: the one under test runs in a container."""
    with docker_host(Path(tempfile.mkdtemp(prefix="ps-compose-"))) as host:
        yield host


def test_compose_builds_and_runs_plugstrip(bare_host: DockerHost, tmp_path: Path) -> None:
    base, wheels = CACHE / "base-bookworm.tar", CACHE / "wheels"
    if not base.exists() or not wheels.exists():
        raise RuntimeError(f"{base} or {wheels} missing: run ./scripts/install-deps test")
    daemon = bare_host.daemon
    harness.docker(daemon, "import", str(base), "plugstrip-base:test", timeout=300)
    context = tmp_path / "context"
    context.mkdir()
    for name in CONTEXT:
        src = ROOT / name
        copy = shutil.copytree if src.is_dir() else shutil.copy
        copy(src, context / name)
    for name in BUILD:
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(wheels, context / "wheels")
    run, state = tmp_path / "run", tmp_path / "state"
    env = {
        "DOCKER_HOST": daemon,
        "COMPOSE_PROJECT_NAME": f"pstest{uuid.uuid4().hex[:6]}",
        "PLUGSTRIP_BASE": "plugstrip-base:test",
        "PLUGSTRIP_PIP_ARGS": "--no-index --find-links=/src/wheels",
        "PLUGSTRIP_IMAGE": "plugstrip:test",
        "PLUGSTRIP_ADMIN_PORT": str(free_port()),
        "DOCKER_SOCKET": daemon.removeprefix("unix://"),
        "PLUGSTRIP_RUN": str(run),
        "PLUGSTRIP_STATE": str(state),
    }
    # this machine can't start privileged containers (its bounding set lacks
    # CAP_SYS_RESOURCE): the capabilities-only variant users get for such hosts
    file = ["-f", str(context / "compose.yml"), "-f", str(context / "compose.caps.yml")]
    up = compose(env, *file, "up", "-d", "--build", timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        sock = run / "docker.sock"
        wait_for(sock.exists, 60, "plugstrip in its container made no socket")
        through = f"unix://{sock}"
        hello = harness.docker(through, "run", "--rm", "busybox", "echo", "hello")
        assert hello.stdout == b"hello\n"
        net = f"n{uuid.uuid4().hex[:6]}"
        harness.docker(through, "network", "create", "-d", "plugstrip/weave", net)
        addrs = harness.docker(
            through, "run", "--rm", "--network", net, "busybox", "ip", "-4", "addr"
        )
        assert b"inet 10.32." in addrs.stdout  # wired by plugstrip, in its container
        # security groups from the container (its image carries nft): a container in a
        # group with no rules takes nothing in, one in no group is open
        (served,) = compose(env, *file, "ps", "-q", "plugstrip").stdout.split()
        group = f"g{uuid.uuid4().hex[:6]}"
        harness.docker(daemon, "exec", served, "plugstrip", "sg", "create", group)
        label = f"io.plugstrip.security-groups={group}"
        for name, options in (("closed", ["--label", label]), ("open", [])):
            harness.docker(
                through, "run", "-d", "--name", f"{net}-{name}", "--network", net,
                *options, "busybox", "sleep", "1d",
            )  # fmt: skip
        ping = ["run", "--rm", "--network", net, "busybox", "ping", "-c", "1", "-W", "1"]
        pings = {
            name: harness.docker(through, *ping, f"{net}-{name}", check=False).returncode
            for name in ("closed", "open")
        }
        assert pings == {"closed": 1, "open": 0}, pings
        harness.docker(through, "rm", "-f", f"{net}-closed", f"{net}-open")
        harness.docker(daemon, "exec", served, "plugstrip", "sg", "rm", group)
        harness.docker(through, "network", "rm", net)
    finally:
        logs = compose(env, *file, "logs", "--no-color")
        print(logs.stdout[-20000:])
        down = compose(env, *file, "down")
        assert down.returncode == 0, down.stderr
    left = harness.docker(daemon, "ps", "-aq", "--filter", "label=io.plugstrip.role=holder")
    assert left.stdout.split() == []  # the holders of its spare pool went with it
