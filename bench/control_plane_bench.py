"""The control plane at scale, simulated on one machine: N hosts (each the real mesh,
service, view and etcd store, with its own etcd connection) on one real etcd, each with K
endpoints on shared networks, and a driver that records instead of programming a kernel.

The hosts run in ``--workers`` processes (one a core by default), not one: a real host has
a CPU of its own, and one process running all would make every host wait for every other
host's work (and one collector scan all their objects), which is the simulation's cost,
not the control plane's. Host 0 runs in this process and is where endpoints are created.

Measured, in one run:
- convergence: from an endpoint attached on host 0 to its entry programmed on every
  other host (p50 and p99 over ``--new`` endpoints, one at a time; the workers stamp when
  their last host programmed it, on the machine's one monotonic clock);
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
import functools
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path

from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers.control.mesh import Mesh
from plugstrip.netdrivers.control.service import NetworkService
from plugstrip.netdrivers.datapath.testkit import RecordingDriver
from plugstrip.netdrivers.domain.contract import Network, RemoteChange, RemoteEndpoint
from plugstrip.netdrivers.stores.etcd import EtcdStore
from plugstrip.netdrivers.stores.store import EndpointMeta, NetworkRecord, NetworkSpec
from tests.etcd import EtcdServer

DRIVER = "plugstrip/weave"
PREFIX = "/plugstrip/"
PER_NETWORK = 500  # endpoints per shared network (a /22 each: half full, as next-fit likes)


class TimedDriver(RecordingDriver):
    """Tells ``programmed`` each remote endpoint's address the first time its entry is
    programmed, whether in a change or in a whole set (the mesh's periodic heal)."""

    def __init__(self, programmed: Callable[[IPAddress], None]) -> None:
        super().__init__(DRIVER)
        self.programmed = programmed
        self.known: set[IPAddress] = set()

    async def set_remotes(self, network: Network, remotes: Collection[RemoteEndpoint]) -> None:
        self._programmed(remotes)

    async def change_remotes(self, network: Network, change: RemoteChange) -> None:
        self._programmed(change.added)

    def _programmed(self, remotes: Collection[RemoteEndpoint]) -> None:
        for remote in remotes:
            if remote.address not in self.known:
                self.known.add(remote.address)
                self.programmed(remote.address)


class SimHost:
    def __init__(self, index: int, url: str, programmed: Callable[[IPAddress], None]):
        self.id = f"host{index:04d}"
        self.driver = TimedDriver(programmed)
        changes = asyncio.Event()
        self.service = NetworkService(
            EtcdStore.from_url(url, PREFIX),
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


async def populate(url: str, hosts: int, per_host: int) -> list[NetworkRecord]:
    """The endpoints every simulated host has, written before the hosts start (as a
    cluster that grew to this size), spread over shared networks."""
    store = EtcdStore.from_url(url, PREFIX)
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
                    meta = EndpointMeta(host=host, ifname="ethps1", name=f"{host}-c{k}")
                    await store.allocate(record.id, owner(host, k), meta=meta)

        await asyncio.gather(*(fill(n, r) for n, r in enumerate(networks)))
        return networks
    finally:
        await store.close()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def start_hosts(hosts: list[SimHost], networks: list[NetworkRecord]) -> None:
    for host in hosts:  # one after another: a process's hosts all reading at once would
        await host.start(networks)  # starve each other (real hosts have a CPU each)
        gc.freeze()  # and its collector would scan every started host's objects again


async def worker(args: argparse.Namespace) -> None:
    """Hosts ``--first`` to ``--first + --count - 1``. Prints ``up RSS_MB`` when they all
    run, then ``seen ADDRESS TIME`` for each address once every host here programmed it,
    and stops when its stdin closes."""
    first, count = args.first, args.count
    progress: dict[IPAddress, int] = {}

    def programmed(address: IPAddress) -> None:
        progress[address] = progress.get(address, 0) + 1
        if progress[address] == count:
            print(f"seen {address} {time.monotonic()}", flush=True)

    store = EtcdStore.from_url(args.worker_of, PREFIX)
    networks = sorted(await store.list_networks(), key=lambda r: int(r.name.removeprefix("net")))
    await store.close()
    hosts = [SimHost(i, args.worker_of, programmed) for i in range(first, first + count)]
    try:
        await start_hosts(hosts, networks)
        print(f"up {rss_mb():.0f}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await asyncio.gather(*(h.close() for h in hosts), return_exceptions=True)


class Workers:
    """The worker processes and what they report: when each address reached all of a
    worker's hosts."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.seen: dict[IPAddress, list[float]] = {}
        self.rss: list[float] = []
        self.changed = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    async def spawn(self, url: str, ranges: list[tuple[int, int]]) -> None:
        for first, count in ranges:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.control_plane_bench", "--worker-of", url,
                "--first", str(first), "--count", str(count),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            self.procs.append(proc)
            self._readers.append(asyncio.create_task(self._read(proc)))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            word, *rest = line.decode().split()
            if word == "up":
                self.rss.append(float(rest[0]))
            elif word == "seen":
                self.seen.setdefault(IPAddress(rest[0]), []).append(float(rest[1]))
            self.changed.set()
        self.changed.set()  # it ended

    async def until(self, done: Callable[[], bool], seconds: float, what: str) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not done():
                    if any(p.returncode is not None for p in self.procs):
                        raise SystemExit(f"a worker ended while waiting for {what}")
                    await self.changed.wait()
                    self.changed.clear()
        if not done():
            raise SystemExit(f"{what}: not within {seconds:.0f} s")

    def everywhere(self, address: IPAddress) -> bool:
        return len(self.seen.get(address, ())) == len(self.procs)

    async def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and proc.returncode is None:
                proc.stdin.close()
        await asyncio.gather(*(p.wait() for p in self.procs), return_exceptions=True)
        for reader in self._readers:
            reader.cancel()


def split(hosts: int, workers: int) -> list[tuple[int, int]]:
    """Hosts 1..hosts-1 as (first, count) per worker, as even as can be."""
    others = hosts - 1
    workers = min(workers, others)
    return [
        (1 + w * others // workers, (w + 1) * others // workers - w * others // workers)
        for w in range(workers)
    ]


async def run(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="cpbench-", dir="/dev/shm"))
    etcd = EtcdServer(work)
    etcd.start()
    assert etcd.proc is not None
    url = etcd.url
    workers = Workers()
    origin: SimHost | None = None
    try:
        started = time.monotonic()
        networks = await populate(url, args.hosts, args.endpoints_per_host)
        endpoints = args.hosts * args.endpoints_per_host
        print(f"populated {endpoints} endpoints on {len(networks)} networks", end="")
        print(f" in {time.monotonic() - started:.1f} s", flush=True)

        started = time.monotonic()
        origin = SimHost(0, url, lambda address: None)
        await start_hosts([origin], networks)
        ranges = split(args.hosts, args.workers)
        await workers.spawn(url, ranges)
        await workers.until(lambda: len(workers.rss) == len(ranges), 3600, "hosts up")
        await asyncio.sleep(2)  # the last hosts' own endpoints reach the others
        took = time.monotonic() - started
        print(f"{args.hosts} hosts up in {len(ranges)} workers in {took:.1f} s", end="")
        rss = sum(workers.rss) + rss_mb()
        print(f"; RSS {rss:.0f} MB ({rss / args.hosts:.1f} MB a host)", flush=True)

        # at rest: nothing changes; what does etcd serve?
        (ranges0, sent0), cpu0, t0 = etcd.served(), cpu_seconds(etcd.proc.pid), time.monotonic()
        await asyncio.sleep(args.rest)
        (ranges1, sent1), cpu1, t1 = etcd.served(), cpu_seconds(etcd.proc.pid), time.monotonic()
        reads = (ranges1 - ranges0) / (t1 - t0)
        sent = (sent1 - sent0) / (t1 - t0) / 1024
        cpu = 100 * (cpu1 - cpu0) / (t1 - t0)

        converge, writes = [], []
        for i in range(args.new):
            record = networks[i % len(networks)]
            t = time.monotonic()
            address = (await origin.service.attach(record, f"{origin.id}-new{i}", None)).address
            writes.append((time.monotonic() - t) * 1000)
            await workers.until(
                functools.partial(workers.everywhere, address),
                30,
                f"endpoint {i} on every host",
            )
            converge.append((max(workers.seen[address]) - t) * 1000)
            await asyncio.sleep(args.gap)
        print(f"converge each, in order: {' '.join(f'{c:.0f}' for c in converge)} ms")
        print(f"of which the write on host 0: {' '.join(f'{w:.0f}' for w in writes)} ms")
        converge.sort()
        p50 = statistics.median(converge)
        p99 = converge[min(len(converge) - 1, round(0.99 * (len(converge) - 1)))]
        return (
            f"hosts {args.hosts} endpoints {endpoints}: converge p50 {p50:.0f} ms "
            f"p99 {p99:.0f} ms; etcd reads at rest {reads:.1f}/s, {sent:.1f} KB/s; "
            f"etcd CPU {cpu:.1f}%"
        )
    finally:
        await workers.close()
        if origin is not None:
            await origin.close()
        etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--endpoints-per-host", type=int, default=100)
    parser.add_argument("--new", type=int, default=20, help="endpoints timed (at least 20)")
    parser.add_argument("--rest", type=float, default=10.0, help="seconds measured at rest")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between new endpoints")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes running the hosts"
    )
    parser.add_argument("--worker-of", help=argparse.SUPPRESS)  # etcd's URL: be a worker
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_of:
        asyncio.run(worker(args))
        return
    if args.hosts < 2 or args.new < 1 or args.workers < 1:
        parser.error("at least 2 hosts, 1 new endpoint and 1 worker")
    print(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
