"""Drivers on an event loop of their own, in a thread.

pyroute2's async netlink socket needs the standard asyncio loop (uvloop, which the proxy
runs on for speed, cannot open AF_NETLINK endpoints). The datapath is also the slow, rare
part of a call; keeping it on its own loop keeps the proxy loop free for traffic.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection, Coroutine
from typing import Any, TypeVar

from plugstrip.netdrivers.domain.contract import (
    Driver,
    Endpoint,
    Network,
    RemoteChange,
    RemoteEndpoint,
)
from plugstrip.netdrivers.domain.security import Count, Denial, Policy
from plugstrip.netdrivers.domain.verify import Finding

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "plugstrip-datapath") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this loop and wait for it from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class OnOwnLoop:
    """A driver whose every call runs on ``thread``'s loop."""

    def __init__(self, driver: Driver, thread: LoopThread) -> None:
        self.driver = driver
        self.thread = thread
        self.name = driver.name
        self.prefixes = driver.prefixes

    async def create_network(self, network: Network) -> None:
        await self.thread.run(self.driver.create_network(network))

    async def delete_network(self, network: Network) -> None:
        await self.thread.run(self.driver.delete_network(network))

    async def join(self, network: Network, endpoint: Endpoint) -> None:
        await self.thread.run(self.driver.join(network, endpoint))

    async def leave(self, network: Network, endpoint: Endpoint) -> None:
        await self.thread.run(self.driver.leave(network, endpoint))

    async def set_remotes(self, network: Network, remotes: Collection[RemoteEndpoint]) -> None:
        await self.thread.run(self.driver.set_remotes(network, remotes))

    async def change_remotes(self, network: Network, change: RemoteChange) -> None:
        await self.thread.run(self.driver.change_remotes(network, change))

    async def set_policy(self, policy: Policy) -> None:
        await self.thread.run(self.driver.set_policy(policy))

    async def counts(self) -> list[Count]:
        return await self.thread.run(self.driver.counts())

    async def verify(
        self, networks: list[Network], endpoints: list[Endpoint], policy: Policy
    ) -> list[Finding]:
        return await self.thread.run(self.driver.verify(networks, endpoints, policy))

    async def watch_denials(self, report: Callable[[Denial], None]) -> None:
        loop = asyncio.get_running_loop()

        def on_callers_loop(denial: Denial) -> None:
            loop.call_soon_threadsafe(report, denial)

        await self.thread.run(self.driver.watch_denials(on_callers_loop))

    def owned(self, networks: list[Network], endpoints: list[Endpoint]) -> set[str]:
        return self.driver.owned(networks, endpoints)

    async def prune(self, networks: list[Network], endpoints: list[Endpoint]) -> list[str]:
        return await self.thread.run(self.driver.prune(networks, endpoints))

    def describe(self, network: Network, endpoint: Endpoint | None = None) -> dict[str, str]:
        return self.driver.describe(network, endpoint)

    async def close(self) -> None:
        await self.thread.run(self.driver.close())
