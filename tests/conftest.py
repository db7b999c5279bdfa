"""Real parts for the tests: a private dockerd with a local busybox image, and plugstrip
itself started as the `plugstrip serve` command users run."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests import dockerhost, harness
from tests.harness import Plugstrip

# Property tests check correctness, not speed: on 2 cores shared with dockerd a draw can
# stall for a second, which hypothesis would report as a failure.
settings.register_profile("plugstrip", suppress_health_check=[HealthCheck.too_slow], deadline=None)
settings.load_profile("plugstrip")

# Tiers, marked from what a test's fixtures start (modules that make namespaces, devices
# or packages themselves say so with ``pytestmark``). ``-m unit`` is everything else: no
# root, no dockerd, no daemon and no plugstrip process, in seconds.
_TIER_FIXTURES = {
    "docker": {"dockerd", "nethost"},
    "system": {"etcd_url"},
    "serve": {"synthetic", "recorder"},  # plugstrip serve before a loopback stand-in
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for tier, fixtures in _TIER_FIXTURES.items():
            if used & fixtures:
                item.add_marker(tier)
        if not any(item.get_closest_marker(tier) for tier in _TIER_FIXTURES):
            item.add_marker("unit")


@pytest.fixture(scope="session")
def dockerd() -> Iterator[str]:
    """A dockerd of our own (never the machine's), with busybox:latest imported."""
    root = Path(tempfile.mkdtemp(prefix="ps-dockerd-"))
    host, proc = harness.start_dockerd(root)
    try:
        yield host
    finally:
        harness.stop_dockerd(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def plugstrip_factory(dockerd: str, tmp_path: Path) -> Iterator[object]:
    started: list[Plugstrip] = []

    def factory(
        config: str | None = None, extra: list[str] | None = None, name: str = "ps"
    ) -> Plugstrip:
        ps = harness.start_plugstrip(dockerd, tmp_path / name, config, extra)
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


@pytest.fixture(scope="session")
def nethost() -> Iterator[dockerhost.DockerHost]:
    """A test "host": its own namespace, dockerd (bridge, iptables) and Open vSwitch."""
    with dockerhost.docker_host(Path(tempfile.mkdtemp(prefix="ps-host-"))) as host:
        yield host


@pytest.fixture(scope="module")
def net(nethost: dockerhost.DockerHost) -> Iterator[dockerhost.DockerHost]:
    """``nethost`` with plugstrip (networks on) in front of its daemon, for a test module."""
    nethost.start_plugstrip()
    try:
        yield nethost
    finally:
        nethost.stop_plugstrip()


@pytest.fixture
def networks(net: dockerhost.DockerHost) -> Iterator[Callable[..., str]]:
    """Makes networks for one test (plugstrip's, or Docker's with driver ``bridge``);
    removes them, and every container but the holders, after."""
    made: list[str] = []

    def make(driver: str = "plugstrip/weave", *args: str) -> str:
        name = f"n{uuid.uuid4().hex[:6]}"
        net.docker("network", "create", "-d", driver, *args, name)
        made.append(name)
        return name

    yield make
    every = harness.docker(net.daemon, "ps", "-aq", "--no-trunc").stdout.decode().split()
    holders = harness.docker(
        net.daemon, "ps", "-aq", "--no-trunc", "--filter", "label=io.plugstrip.role=holder"
    ).stdout.decode()
    users = [c for c in every if c not in holders.split()]
    if users:
        net.docker("rm", "-f", *users)
    for name in made:
        net.docker("network", "rm", name, check=False)
