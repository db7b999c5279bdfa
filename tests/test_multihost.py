"""One plugstrip network across hosts: three test hosts (namespaces on an underlay bridge,
each with its own dockerd, Open vSwitch and plugstrip) sharing one etcd, driven through
the unchanged docker CLI. Reach by address and by name across hosts, isolation, concurrent
allocation, and the faults: a host leaving, coming back, losing its lease, etcd away."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness
from tests.cluster import Cluster, cluster
from tests.dockerhost import DockerHost
from tests.harness import wait_for
from tests.netcheck import address, reaches, sleeper, tcp_reaches, uname

LEASE_TTL = 10  # netdrivers.mesh.LEASE_TTL: a silent host is dropped after it


@pytest.fixture(scope="module")
def trio() -> Iterator[Cluster]:
    with cluster(Path(tempfile.mkdtemp(prefix="ps-cluster-")), 3) as made:
        yield made


@pytest.fixture(scope="module")
def ovs_pair() -> Iterator[Cluster]:
    workdir = Path(tempfile.mkdtemp(prefix="ps-ovs-cluster-"))
    with cluster(workdir, 2, underlay_through_ovs=True) as made:
        yield made


def plugstrip(c: Cluster, *args: str) -> str:
    """An operator command against the cluster's etcd, from a host (where etcd is reached)."""
    host = c.hosts[0].netns_path
    out = subprocess.run(
        ["nsenter", f"--net={host}", "plugstrip", *args, "--store", c.etcd.url],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def inspect(c: Cluster, network: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(plugstrip(c, "net", "inspect", network))
    return doc


def holder_count(host: DockerHost) -> int:
    out = harness.docker(host.daemon, "ps", "-aq", "--filter", "label=io.plugstrip.role=holder")
    return len(out.stdout.split())


def flood_peers(host: DockerHost, vni: object) -> set[str]:
    """Where the network's VXLAN device on ``host`` floods to: the hosts it tunnels to."""
    out = host.run_in_ns("bridge", "fdb", "show", "dev", f"psvx{vni}").stdout
    return {
        line.split(" dst ")[1].split()[0]
        for line in out.splitlines()
        if line.startswith("00:00:00:00:00:00") and " dst " in line
    }


def test_one_network_across_hosts_by_address_and_name(trio: Cluster) -> None:
    a, b, c = trio.hosts
    wide, other = uname("wide"), uname("other")
    a.docker("network", "create", "-d", "plugstrip/weave", wide)
    assert wide in b.docker("network", "ls", "--format", "{{.Name}}").stdout.decode().split()
    b.docker("network", "create", "-d", "plugstrip/weave", other)
    web, client, stranger = uname("web"), uname("cli"), uname("str")
    sleeper(a, web, wide)
    sleeper(b, client, wide)
    sleeper(c, stranger, other)
    ip = address(a, web, wide)
    assert address(b, client, wide) != ip  # one address space across the hosts
    wait_for(lambda: reaches(b, client, ip), 10, "no reach across hosts by address")
    assert reaches(b, client, web)  # by name, answered from the shared store
    assert reaches(a, web, client)
    vni = inspect(trio, wide)["VNI"]
    assert flood_peers(a, vni) == {b.address} and flood_peers(b, vni) == {a.address}
    listed = plugstrip(trio, "net", "hosts").splitlines()[1:]  # the operator's view
    assert sorted(line.split()[1] for line in listed) == sorted(str(h.address) for h in trio.hosts)
    # c has no endpoint on wide: no tunnel to it, and its container is out of reach
    assert not reaches(b, client, address(c, stranger, other))
    assert not reaches(b, client, stranger)
    for host, name in ((a, web), (b, client), (c, stranger)):
        host.docker("rm", "-f", name)
    # the last endpoints gone: no tunnels left
    wait_for(lambda: flood_peers(a, vni) == set(), 10, "a tunnel outlived the endpoints")
    c.docker("network", "rm", wide, other)  # removed anywhere: gone everywhere
    wait_for(
        lambda: a.run_in_ns("ip", "link", "show", f"psvx{vni}").returncode != 0,
        10,
        "the network's devices stayed on the host that made it",
    )


def test_three_hosts_allocate_at_once_without_duplicates(trio: Cluster) -> None:
    name = uname("busy")
    trio.hosts[0].docker("network", "create", "-d", "plugstrip/weave", name)
    per_host = 8
    failures: list[str] = []

    def run(host: DockerHost, i: int) -> None:
        out = host.docker(
            "run",
            "-d",
            "--name",
            f"{name}-{i}",
            "--network",
            name,
            "busybox",
            "sleep",
            "1d",
            check=False,
        )
        if out.returncode != 0:
            failures.append(out.stderr.decode())

    threads = [
        threading.Thread(target=run, args=(host, n * per_host + i))
        for n, host in enumerate(trio.hosts)
        for i in range(per_host)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert failures == []
    endpoints = inspect(trio, name)["Endpoints"]
    assert isinstance(endpoints, list)
    addresses = [e["address"] for e in endpoints]
    assert len(addresses) == 3 * per_host and len(set(addresses)) == len(addresses)
    assert len({e["host"] for e in endpoints}) == 3  # each host's own, recorded as such
    for n, host in enumerate(trio.hosts):
        host.docker("rm", "-f", *(f"{name}-{n * per_host + i}" for i in range(per_host)))
    trio.hosts[0].docker("network", "rm", name)


def test_host_leaving_restarting_and_losing_its_lease(trio: Cluster) -> None:
    a, b, _ = trio.hosts
    name = uname("life")
    a.docker("network", "create", "-d", "plugstrip/weave", name)
    x, y = uname("x"), uname("y")
    sleeper(a, x, name)
    sleeper(b, y, name)
    ip_y = address(b, y, name)
    vni = inspect(trio, name)["VNI"]
    wait_for(lambda: reaches(a, x, y), 10, "no reach across hosts")

    b.stop_plugstrip()  # a clean stop leaves the cluster: the tunnel to it goes at once
    wait_for(lambda: flood_peers(a, vni) == set(), 5, "the tunnel to a host that left stayed")
    trio.start_plugstrip(b)  # back: the same endpoint, the same address, reached again
    wait_for(lambda: flood_peers(a, vni) == {b.address}, 10, "the tunnel did not come back")
    assert address(b, y, name) == ip_y
    wait_for(lambda: reaches(a, x, ip_y), 10, "no reach after the host came back")

    assert b.ps is not None
    b.ps.proc.send_signal(signal.SIGKILL)  # a crash: no goodbye, the lease runs out
    b.ps.proc.wait(10)
    b.ps = None
    assert flood_peers(a, vni) == {b.address}  # still there before the lease runs out
    wait_for(lambda: flood_peers(a, vni) == set(), LEASE_TTL + 10, "a dead host kept its tunnel")
    trio.start_plugstrip(b)
    wait_for(lambda: reaches(a, x, y), 15, "no reach after the crash")
    a.docker("rm", "-f", x)
    b.docker("rm", "-f", y)
    a.docker("network", "rm", name)


def test_etcd_away_and_back(trio: Cluster) -> None:
    a, b, c = trio.hosts
    name = uname("calm")
    a.docker("network", "create", "-d", "plugstrip/weave", name)
    x, y = uname("x"), uname("y")
    sleeper(a, x, name)
    sleeper(b, y, name)
    wait_for(lambda: reaches(a, x, y), 10, "no reach across hosts")
    ip_y = address(b, y, name)
    trio.etcd.stop()
    try:
        holders = holder_count(c)
        for args in (
            ["network", "create", "-d", "plugstrip/weave", uname("no")],
            ["run", "--rm", "--network", name, "busybox", "true"],
        ):
            out = c.docker(*args, check=False)
            assert out.returncode != 0 and b"cannot reach etcd" in out.stderr, out.stderr
        assert holder_count(c) == holders  # nothing half made
        assert reaches(a, x, ip_y)  # the datapath stays as it was
    finally:
        trio.etcd.start()
    z = uname("z")
    sleeper(c, z, name)  # etcd back: a new endpoint, on a third host
    wait_for(lambda: reaches(c, z, x) and reaches(a, x, z), 15, "no reach after etcd came back")
    for host, box in ((a, x), (b, y), (c, z)):
        host.docker("rm", "-f", box)
    a.docker("network", "rm", name)


def test_host_cut_off_and_back(trio: Cluster) -> None:
    a, b, c = trio.hosts
    name = uname("cut")
    a.docker("network", "create", "-d", "plugstrip/weave", name)
    x, y = uname("x"), uname("y")
    sleeper(a, x, name)
    sleeper(c, y, name)
    ip_y = address(c, y, name)
    vni = inspect(trio, name)["VNI"]
    wait_for(lambda: reaches(a, x, ip_y), 10, "no reach across hosts")
    trio.switch.cut(c, off=True)
    try:
        wait_for(
            lambda: flood_peers(a, vni) == set(), LEASE_TTL + 10, "a cut-off host kept its tunnel"
        )
        out = c.docker("run", "--rm", "--network", name, "busybox", "true", check=False)
        assert out.returncode != 0 and b"cannot reach etcd" in out.stderr, out.stderr
        more = [uname("m") for _ in range(3)]  # meanwhile, the others go on allocating
        for box in more:
            sleeper(b, box, name)
    finally:
        trio.switch.cut(c, off=False)
    back = {b.address, c.address}  # b has endpoints on it now, too
    wait_for(lambda: flood_peers(a, vni) == back, 15, "the host did not come back")
    wait_for(lambda: reaches(a, x, y) and reaches(c, y, x), 15, "no reach after the cut")
    assert address(c, y, name) == ip_y  # its endpoint was kept
    endpoints = inspect(trio, name)["Endpoints"]
    assert isinstance(endpoints, list) and len(endpoints) == 5
    assert len({e["address"] for e in endpoints}) == 5  # no address handed out twice
    assert all(reaches(b, box, y) for box in more)
    b.docker("rm", "-f", *more)
    a.docker("rm", "-f", x)
    c.docker("rm", "-f", y)
    a.docker("network", "rm", name)


def tunnel_ports(host: DockerHost) -> dict[str, str]:
    """plugstrip's VXLAN ports on the host's integration bridge: name -> remote_ip."""
    query = ["--format=json", "--columns=name,options", "find", "Interface", "type=vxlan"]
    out = subprocess.run(
        ["ovs-vsctl", f"--db={host.ovsdb}", *query],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout)["data"]
    return {name: dict(options[1])["remote_ip"] for name, options in rows}


def test_ovs_networks_across_hosts(ovs_pair: Cluster) -> None:
    a, b = ovs_pair.hosts
    red, blue = uname("red"), uname("blue")
    for name in (red, blue):
        a.docker("network", "create", "-d", "plugstrip/ovs", name)
    x, y, web, other = uname("x"), uname("y"), uname("web"), uname("o")
    sleeper(a, x, red)
    sleeper(b, y, red)
    b.docker("run", "-d", "--name", web, "--network", red, "busybox", "httpd", "-f", "-p", "80")
    sleeper(b, other, blue)
    wait_for(lambda: reaches(a, x, address(b, y, red)), 15, "no reach across hosts over OVS")
    assert reaches(a, x, y) and tcp_reaches(a, x, web)  # by name; TCP through the tunnel
    # one VXLAN port keyed by VNI per network and peer: red has endpoints on both hosts
    assert sorted(tunnel_ports(a).values()) == [b.address]
    assert not reaches(a, x, address(b, other, blue)) and not reaches(a, x, other)

    b.stop_plugstrip()  # b leaves: its tunnel port goes
    wait_for(lambda: tunnel_ports(a) == {}, 5, "a tunnel port to a host that left stayed")
    ovs_pair.start_plugstrip(b)
    wait_for(lambda: reaches(a, x, y), 15, "no reach after the host came back")
    for host, box in ((a, x), (b, y), (b, web), (b, other)):
        host.docker("rm", "-f", box)
    wait_for(lambda: tunnel_ports(a) == {}, 10, "a tunnel port outlived the endpoints")
    a.docker("network", "rm", red, blue)
