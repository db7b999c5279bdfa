"""What the network benchmarks share: iperf3 between namespaces, and timed allocations
on a network already holding many addresses."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

from netaddr import IPNetwork

from plugstrip.netdrivers.stores.store import NetworkSpec, Store


def in_pid_ns(pid: str) -> list[str]:
    """The prefix that runs a command in process ``pid``'s network namespace."""
    return ["nsenter", "-t", pid, "-n"]


def iperf(server_ns: list[str], client_ns: list[str], address: str, seconds: int) -> float:
    """Gbit/s of TCP from ``client_ns`` to an iperf3 server in ``server_ns`` (prefixes that
    run a command in a namespace), received at ``address``."""
    server = subprocess.Popen([*server_ns, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(
            [*client_ns, "iperf3", "-c", address, "-t", str(seconds), "-J"],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 30,
        ).stdout
    finally:
        server.wait(10)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


async def allocation_times(store: Store, in_use: int, subnet: str, count: int) -> list[float]:
    """Seconds for each of ``count`` allocations, one at a time, on a network on ``subnet``
    with ``in_use`` addresses already held; the store is closed after."""
    try:
        spec = NetworkSpec("busy", "plugstrip/weave", IPNetwork(subnet))
        net = await store.create_network(spec)
        for i in range(0, in_use, 100):
            await asyncio.gather(*(store.allocate(net.id, f"pre{j}") for j in range(i, i + 100)))
        times = []
        for i in range(count):
            started = time.perf_counter()
            await store.allocate(net.id, f"new{i}")
            times.append(time.perf_counter() - started)
        return times
    finally:
        await store.close()
