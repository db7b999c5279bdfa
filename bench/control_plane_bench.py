"""The control plane at scale, simulated on one machine: N hosts (each the real mesh,
service, view and etcd store, with its own etcd connection) on one real etcd, each with K
endpoints on shared networks, and a driver that records instead of programming a kernel.

Measured, in one run:
- convergence: from an endpoint attached on one host to its entry programmed on every
  other host (p50 and p99 over ``--new`` endpoints, one at a time);
- etcd at rest (every host up, nothing changing): its read requests (Range) and the bytes
  it sends per second, and its CPU.

    python3 -m bench.control_plane_bench --hosts 200 --endpoints-per-host 100

The last line: ``hosts N endpoints E: converge p50 X ms p99 Y ms; etcd reads at rest R/s,
B KB/s; etcd CPU C%``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers.contract import Network, RemoteChange, RemoteEndpoint
from plugstrip.netdrivers.etcd_store import EtcdStore
from plugstrip.netdrivers.mesh import Mesh
from plugstrip.netdrivers.service import NetworkService
from plugstrip.netdrivers.store import NetworkRecord, NetworkSpec
from plugstrip.netdrivers.testkit import RecordingDriver
from tests.etcd import EtcdServer

DRIVER = "plugstrip/weave"
PER_NETWORK = 500  # endpoints per shared network (a /22 each: half full, as next-fit likes)
PROGRESS = asyncio.Event()  # set whenever a driver programmed an entry


class TimedDriver(RecordingDriver):
    """Records when each remote endpoint's entry was first programmed, by address, whether
    in a change or in a whole set (the mesh's periodic heal)."""

    def __init__(self, seen: dict[IPAddress, list[float]]) -> None:
        super().__init__(DRIVER)
        self.seen = seen
        self.known: set[IPAddress] = set()

    async def set_remotes(self, network: Network, remotes: Collection[RemoteEndpoint]) -> None:
        self._programmed(remotes)

    async def change_remotes(self, network: Network, change: RemoteChange) -> None:
        self._programmed(change.added)

    def _programmed(self, remotes: Collection[RemoteEndpoint]) -> None:
        now = time.monotonic()
        for remote in remotes:
            if remote.address not in self.known:
                self.known.add(remote.address)
                self.seen.setdefault(remote.address, []).append(now)
        PROGRESS.set()


class SimHost:
    def __init__(self, index: int, url: str, prefix: str, seen: dict[IPAddress, list[float]]):
        self.id = f"host{index:04d}"
        self.driver = TimedDriver(seen)
        changes = asyncio.Event()
        self.service = NetworkService(
            EtcdStore.from_url(url, prefix),
            {DRIVER: self.driver},
            pool=IPNetwork("10.0.0.0/8"),
            host=self.id,
            on_change=changes.set,
        )
        address = IPAddress(0xC0A80000 + index + 1)  # 192.168.x.y: never sent to
        self.mesh = Mesh(self.service, address, changes)

    async def start(self, networks: list[NetworkRecord]) -> None:
        await self.service.start()
        await self.service.view.ready.wait()
        self.mesh.start()
        for k, record in enumerate(networks):  # set up here (its endpoint k is on it)
            await self.service.attach(record, owner(self.id, k), None)  # no write: it has it

    async def close(self) -> None:
        await self.mesh.close()
        await self.service.close()


def owner(host: str, k: int) -> str:
    return f"{host}-ep{k}"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def populate(url: str, prefix: str, hosts: int, per_host: int) -> list[NetworkRecord]:
    """The endpoints every simulated host has, written before the hosts start (as a
    cluster that grew to this size), spread over shared networks."""
    store = EtcdStore.from_url(url, prefix)
    try:
        count = max(1, (hosts * per_host + PER_NETWORK - 1) // PER_NETWORK)
        if count > per_host:
            raise SystemExit(f"{per_host} endpoints a host cannot be on all {count} networks")
        networks = [
            await store.create_network(NetworkSpec(f"net{i}", DRIVER), IPNetwork("10.0.0.0/8"), 22)
            for i in range(count)
        ]

        async def fill(n: int, record: NetworkRecord) -> None:
            for h in range(hosts):  # host h's endpoint k is on network k % count
                host = f"host{h:04d}"
                for k in range(n, per_host, len(networks)):
                    meta = {"host": host, "ifname": "ethps1", "name": f"{host}-c{k}"}
                    await store.allocate(record.id, owner(host, k), meta=meta)

        await asyncio.gather(*(fill(n, r) for n, r in enumerate(networks)))
        return networks
    finally:
        await store.close()


async def run(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="cpbench-", dir="/dev/shm"))
    etcd = EtcdServer(work)
    etcd.start()
    assert etcd.proc is not None
    prefix = "/plugstrip/"
    url = etcd.url
    hosts: list[SimHost] = []
    try:
        started = time.monotonic()
        networks = await populate(url, prefix, args.hosts, args.endpoints_per_host)
        endpoints = args.hosts * args.endpoints_per_host
        print(f"populated {endpoints} endpoints on {len(networks)} networks", end="")
        print(f" in {time.monotonic() - started:.1f} s", flush=True)

        seen: dict[IPAddress, list[float]] = {}
        started = time.monotonic()
        hosts = [SimHost(i, url, prefix, seen) for i in range(args.hosts)]
        for host in hosts:  # one after another: one process runs them all, reading at once
            await host.start(networks)  # would starve the rest (real hosts have a CPU each)
            # and its collector would scan every host's objects (E of them each) again and
            # again, pausing all hosts for seconds: a host's own process holds 1/N of them
            gc.freeze()
        await asyncio.sleep(2)  # the last hosts' own endpoints reach the others
        took = time.monotonic() - started
        each = took / args.hosts
        print(f"{args.hosts} hosts up and converged in {took:.1f} s ({each:.2f} s each)")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"simulation RSS {rss:.0f} MB ({rss / args.hosts:.1f} MB a host)", flush=True)

        # at rest: nothing changes; what does etcd serve?
        (ranges0, sent0), cpu0, t0 = etcd.served(), cpu_seconds(etcd.proc.pid), time.monotonic()
        await asyncio.sleep(args.rest)
        (ranges1, sent1), cpu1, t1 = etcd.served(), cpu_seconds(etcd.proc.pid), time.monotonic()
        reads = (ranges1 - ranges0) / (t1 - t0)
        sent = (sent1 - sent0) / (t1 - t0) / 1024
        cpu = 100 * (cpu1 - cpu0) / (t1 - t0)

        converge = []
        for i in range(args.new):
            host = hosts[(i * 7919) % len(hosts)]
            record = networks[i % len(networks)]
            t = time.monotonic()
            attached = await host.service.attach(record, f"{host.id}-new{i}", None)
            others = args.hosts - 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    while len(seen.get(attached.address, ())) < others:
                        await PROGRESS.wait()
                        PROGRESS.clear()
            times = seen.get(attached.address, [])
            if len(times) < others:
                raise SystemExit(f"endpoint {i} reached {len(times)} of {others} hosts in 30 s")
            converge.append((max(times) - t) * 1000)
            await asyncio.sleep(args.gap)
        converge.sort()
        p50 = statistics.median(converge)
        p99 = converge[min(len(converge) - 1, round(0.99 * (len(converge) - 1)))]
        print(f"converge each: {' '.join(f'{c:.0f}' for c in converge)} ms")
        return (
            f"hosts {args.hosts} endpoints {endpoints}: converge p50 {p50:.0f} ms "
            f"p99 {p99:.0f} ms; etcd reads at rest {reads:.1f}/s, {sent:.1f} KB/s; "
            f"etcd CPU {cpu:.1f}%"
        )
    finally:
        await asyncio.gather(*(h.close() for h in hosts), return_exceptions=True)
        etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--endpoints-per-host", type=int, default=100)
    parser.add_argument("--new", type=int, default=20, help="endpoints timed (at least 20)")
    parser.add_argument("--rest", type=float, default=10.0, help="seconds measured at rest")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between new endpoints")
    args = parser.parse_args()
    if args.hosts < 2 or args.new < 1:
        parser.error("at least 2 hosts and 1 new endpoint")
    print(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
