"""Several test hosts on one machine: namespaces joined by an underlay bridge, each with its
own dockerd, Open vSwitch and plugstrip, all sharing one etcd on the underlay."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from tests import netns
from tests.dockerhost import DockerHost, Underlay, docker_host, underlay
from tests.etcd import EtcdServer

UNDERLAY = IPv4Network("192.168.219.0/24")


@dataclass
class Cluster:
    hosts: list[DockerHost]
    etcd: EtcdServer
    switch: Underlay

    def start_plugstrip(self, host: DockerHost) -> None:
        host.extra = ["--store", self.etcd.url, "--advertise-addr", str(host.address)]
        host.start_plugstrip()


@contextmanager
def cluster(
    workdir: Path, count: int, underlay_through_ovs: bool = False, started: int | None = None
) -> Iterator[Cluster]:
    """``count`` hosts, plugstrip running on the first ``started`` (all by default); their
    underlay through their Open vSwitch if asked (the userspace datapath's tunnels need
    that, see Underlay.through_ovs)."""
    with underlay(UNDERLAY) as switch, ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)  # etcd's data, last
        etcd = EtcdServer(workdir / "etcd", netns.path(switch.ns), switch.address)
        etcd.start()
        stack.callback(etcd.stop)
        hosts = [
            stack.enter_context(docker_host(workdir / f"host{i}", switch)) for i in range(count)
        ]
        made = Cluster(hosts, etcd, switch)
        for i, host in enumerate(hosts):
            if underlay_through_ovs:
                switch.through_ovs(host)
            if started is None or i < started:
                made.start_plugstrip(host)
        yield made
