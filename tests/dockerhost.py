"""A test "host" for the network tests: a namespace of its own with a real dockerd (default
bridge, iptables, port publishing as on a real machine), a userspace Open vSwitch, and
plugstrip in front of the daemon, all in that namespace."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

from plugstrip.adapters.network import holder_pool
from plugstrip.netdrivers.datapath.netlink import tx_checksum_off
from tests import harness, netns
from tests.harness import Plugstrip
from tests.ovs import ovs_in

UNDERLAY_DEVICE = "u0"  # each host's link into the underlay


@dataclass
class Underlay:
    """A namespace with one bridge, the "switch" between hosts: each host joins with a
    veth and gets the next address of ``subnet``; the bridge itself has the last one."""

    ns: str
    subnet: IPv4Network
    joined_as: dict[str, int] = field(default_factory=dict)  # host namespace -> number

    @property
    def address(self) -> str:
        return str(self.subnet.broadcast_address - 1)

    def join(self, host_ns: str) -> str:
        number = self.joined_as[host_ns] = len(self.joined_as) + 1
        address = str(self.subnet.network_address + number)
        port = f"ul{number}"
        _ip(
            self.ns,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY_DEVICE,
            "netns",
            host_ns,
        )
        _ip(self.ns, "link", "set", port, "master", "ul0", "up")
        _ip(host_ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", UNDERLAY_DEVICE)
        _ip(host_ns, "link", "set", UNDERLAY_DEVICE, "up")
        return address

    def through_ovs(self, host: DockerHost) -> None:
        """Carry ``host``'s underlay through its Open vSwitch: the link on a userspace
        bridge ``br-phy`` holding the address, as OVS's userspace tunnels need (they route
        out through an OVS bridge). Checksums are filled in before frames reach it (its
        datapath forwards them as they are)."""
        address = f"{host.address}/{self.subnet.prefixlen}"
        vsctl = ["ovs-vsctl", f"--db={host.ovsdb}"]
        bridge = ["add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev"]
        port = ["--", "add-port", "br-phy", UNDERLAY_DEVICE]
        subprocess.run([*vsctl, *bridge, *port], check=True, capture_output=True)
        _ip(host.ns, "addr", "del", address, "dev", UNDERLAY_DEVICE)
        _ip(host.ns, "addr", "add", address, "dev", "br-phy")
        _ip(host.ns, "link", "set", "br-phy", "up")
        asyncio.run(tx_checksum_off(host.netns_path, "br-phy", UNDERLAY_DEVICE))
        asyncio.run(tx_checksum_off(netns.path(self.ns), f"ul{self.joined_as[host.ns]}"))

    def cut(self, host: DockerHost, off: bool) -> None:
        """Unplug a host from the switch (``off``), or plug it back."""
        port = f"ul{self.joined_as[host.ns]}"
        _ip(self.ns, "link", "set", port, "down" if off else "up")


@contextmanager
def underlay(subnet: IPv4Network) -> Iterator[Underlay]:
    with netns.namespaces(1) as (ns,):
        switch = Underlay(ns, subnet)
        # A fixed MAC: a bridge otherwise takes its ports' lowest, which changes as hosts
        # leave, and the others' ARP entries for it (etcd's address) go stale.
        _ip(ns, "link", "add", "ul0", "address", "02:00:c0:a8:db:fe", "type", "bridge")
        _ip(ns, "addr", "add", f"{switch.address}/{subnet.prefixlen}", "dev", "ul0")
        _ip(ns, "link", "set", "ul0", "up")
        yield switch


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


@dataclass
class DockerHost:
    ns: str  # the namespace's name (ip netns)
    daemon: str  # DOCKER_HOST of the dockerd itself
    ovsdb: str
    workdir: Path
    daemon_proc: subprocess.Popen[bytes] | None = None
    ps: Plugstrip | None = None
    extra: list[str] = field(default_factory=list)
    address: str | None = None  # on an underlay: where other hosts reach it

    @property
    def netns_path(self) -> str:
        return netns.path(self.ns)

    @property
    def host(self) -> str:
        """DOCKER_HOST of plugstrip, for the clients under test."""
        assert self.ps is not None, "plugstrip is not running"
        return self.ps.host

    def start_plugstrip(
        self,
        config: str | None = None,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> Plugstrip:
        self.ps = harness.start_plugstrip(
            self.daemon,
            self.workdir / "plugstrip",
            config,
            extra=["--ovsdb", self.ovsdb, *self.extra, *extra],
            netns=self.netns_path,
            env=env,
        )
        return self.ps

    def stop_plugstrip(self) -> None:
        if self.ps is not None:
            self.ps.stop()
            # pytest shows this only for a failing test: what plugstrip said meanwhile
            print(self.ps.log.read_text()[-20000:], file=sys.stderr)
            self.ps = None

    def restart_daemon(self) -> None:
        """Stop dockerd (its containers stop with it) and start it again."""
        assert self.daemon_proc is not None
        harness.stop_dockerd(self.daemon_proc)
        _, self.daemon_proc = harness.start_dockerd(self.workdir / "docker", netns=self.netns_path)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """The docker CLI through plugstrip."""
        return harness.docker(self.host, *args, check=check)

    def inspect(self, name: str) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.docker("inspect", name).stdout)[0]
        return result

    def run_in_ns(self, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return netns.run(self.ns, *cmd, timeout=timeout)

    # ---- what is left behind ---------------------------------------------------------------

    def allocations(self) -> int:
        return len(self._owners())

    def _owners(self) -> list[str]:
        db = sqlite3.connect(self.workdir / "plugstrip" / "state" / "networks.db")
        try:
            return [row[0] for row in db.execute("SELECT owner FROM allocations")]
        finally:
            db.close()

    def holders(self) -> list[str]:
        """Holder containers, spares beyond the pool's size included: a leak shows."""
        out = harness.docker(
            self.daemon, "ps", "-aq", "--no-trunc", "--filter", "label=io.plugstrip.role=holder"
        ).stdout.decode()
        every = out.split()
        users = harness.docker(
            self.daemon, "ps", "-a", "--format", '{{.Label "io.plugstrip.holder"}}'
        ).stdout.decode()
        busy = set(users.split()) | set(self._owners())
        spares = [h for h in every if h not in busy]
        return [h for h in every if h in busy] + spares[holder_pool.DEFAULT_SIZE :]

    def host_veths(self) -> list[str]:
        out = self.run_in_ns("ip", "-o", "link", "show").stdout
        names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
        # veth host ends: psv/pso and a hex hash (psvx<VNI> is a network's VXLAN device)
        return [n for n in names if n.startswith(("psv", "pso")) and not n.startswith("psvx")]

    def leftovers(self) -> tuple[int, int, int]:
        return self.allocations(), len(self.holders()), len(self.host_veths())


@contextmanager
def docker_host(workdir: Path, underlay: Underlay | None = None) -> Iterator[DockerHost]:
    """A test host; on ``underlay`` (a link into its bridge, with the next address), if
    given, as one of several hosts."""
    try:
        with netns.namespaces(1) as (ns,), ovs_in(netns.path(ns), workdir / "ovs") as ovsdb:
            address = underlay.join(ns) if underlay is not None else None
            (workdir / "docker").mkdir(parents=True, exist_ok=True)
            daemon, proc = harness.start_dockerd(workdir / "docker", netns=netns.path(ns))
            host = DockerHost(ns, daemon, ovsdb, workdir, proc, address=address)
            try:
                yield host
            finally:
                host.stop_plugstrip()
                subprocess.run(
                    ["sh", "-c", f"docker -H {daemon} rm -f $(docker -H {daemon} ps -aq)"],
                    capture_output=True,
                    check=False,
                    timeout=120,
                )
                assert host.daemon_proc is not None
                harness.stop_dockerd(host.daemon_proc)
    finally:  # after OVS has stopped: it finds its pid files in there
        harness.unmount_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
