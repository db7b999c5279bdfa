"""The underlay MTU comes from the real uplink: on a host whose default route leaves by a
1400-MTU device (as on this kind of machine), networks made with no --advertise-addr get
1350, and `plugstrip doctor` is all OK and says where the figure came from."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.dockerhost import DockerHost
from tests.test_networks import plugstrip_cmd

pytestmark = pytest.mark.system  # namespaces, devices, daemons or installs of its own


@pytest.fixture
def uplink_1400(nethost: DockerHost) -> Iterator[DockerHost]:
    """A default route through a device of MTU 1400: one end of a veth pair whose other
    end is in the same namespace (the kernel here has no dummy devices); nothing is sent."""
    for cmd in (
        ("ip", "link", "add", "psup0", "mtu", "1400", "type", "veth", "peer", "name", "psup1"),
        ("ip", "link", "set", "psup1", "up"),
        ("ip", "link", "set", "psup0", "up"),
        ("ip", "addr", "add", "192.0.2.10/24", "dev", "psup0"),
        ("ip", "route", "add", "default", "via", "192.0.2.1", "dev", "psup0"),
    ):
        done = nethost.run_in_ns(*cmd)
        assert done.returncode == 0, done.stderr
    nethost.start_plugstrip()
    try:
        yield nethost
    finally:
        nethost.stop_plugstrip()
        nethost.run_in_ns("ip", "link", "del", "psup0")


def test_networks_take_the_default_routes_mtu(uplink_1400: DockerHost) -> None:
    host = uplink_1400
    net, c = f"mtu{uuid.uuid4().hex[:6]}", f"c{uuid.uuid4().hex[:6]}"
    host.docker("network", "create", "-d", "plugstrip/weave", net)
    try:
        host.docker("run", "-d", "--name", c, "--network", net, "busybox", "sleep", "60")
        links = host.docker("exec", c, "ip", "-o", "link").stdout.decode()
        ours = [line for line in links.splitlines() if "mtu 1350" in line]
        assert ours and "mtu 1450" not in links, links
        healthy = plugstrip_cmd(host, "doctor")
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert "OK    mtu: underlay 1400 (psup0, default route" in healthy.stdout, healthy.stdout
        state = json.loads((host.workdir / "plugstrip/state/serve.json").read_text())
        assert state["underlay"] == {"mtu": 1400, "from": "psup0, default route"}
    finally:
        host.docker("rm", "-f", c, check=False)
        host.docker("network", "rm", net, check=False)
