"""A kit for driver and control-plane authors: a driver that records instead of
programming the kernel, for the real service, store and mesh above it.

::

    from plugstrip.netdrivers.datapath.testkit import RecordingDriver

    driver = RecordingDriver()
    service = NetworkService(SqliteStore(path), {driver.name: driver})
    ...
    assert driver.remotes_of("net1")[-1] == [...]
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from plugstrip.netdrivers.domain.contract import Endpoint, Network, RemoteChange, RemoteEndpoint
from plugstrip.netdrivers.domain.security import Count, Denial, Policy
from plugstrip.netdrivers.domain.verify import Finding


class RecordingDriver:
    """The driver contract, doing nothing but remembering what it was asked."""

    prefixes: tuple[str, ...] = ()

    def __init__(self, name: str = "plugstrip/weave") -> None:
        self.name = name
        self.calls: list[tuple[str, str, object]] = []

    async def create_network(self, network: Network) -> None:
        self.calls.append(("create", network.name, None))

    async def delete_network(self, network: Network) -> None:
        self.calls.append(("delete", network.name, None))

    async def join(self, network: Network, endpoint: Endpoint) -> None:
        self.calls.append(("join", network.name, endpoint.container_id))

    async def leave(self, network: Network, endpoint: Endpoint) -> None:
        self.calls.append(("leave", network.name, endpoint.container_id))

    async def set_remotes(self, network: Network, remotes: Collection[RemoteEndpoint]) -> None:
        self.calls.append(("remotes", network.name, sorted(remotes, key=str)))

    async def change_remotes(self, network: Network, change: RemoteChange) -> None:
        self.calls.append(("change", network.name, change))

    async def set_policy(self, policy: Policy) -> None:
        self.calls.append(("policy", "", policy))

    async def counts(self) -> list[Count]:
        return []  # no datapath: nothing counted

    async def verify(
        self, networks: list[Network], endpoints: list[Endpoint], policy: Policy
    ) -> list[Finding]:
        return []  # no datapath to check

    async def watch_denials(self, report: Callable[[Denial], None]) -> None:
        return  # nor logged

    def owned(self, networks: list[Network], endpoints: list[Endpoint]) -> set[str]:
        return set()

    async def prune(self, networks: list[Network], endpoints: list[Endpoint]) -> list[str]:
        return []

    def describe(self, network: Network, endpoint: Endpoint | None = None) -> dict[str, str]:
        return {}

    async def close(self) -> None:
        self.calls.append(("close", "", None))

    def remotes_of(self, network: str) -> list[object]:
        """Each set of remotes ``network`` was programmed with, in order."""
        return [arg for call, name, arg in self.calls if call == "remotes" and name == network]

    def changes_of(self, network: str) -> list[RemoteChange]:
        """Each change of ``network``'s remotes, in order."""
        return [
            arg
            for call, name, arg in self.calls
            if call == "change" and name == network and isinstance(arg, RemoteChange)
        ]

    def reached(self, network: str) -> set[RemoteEndpoint]:
        """The remotes ``network`` reaches now: the last full set and the changes since."""
        found: set[RemoteEndpoint] = set()
        for call, name, arg in self.calls:
            if name != network:
                continue
            if call == "remotes":
                found = set(arg)  # type: ignore[call-overload]
            elif call == "change" and isinstance(arg, RemoteChange):
                found = (found - set(arg.removed)) | set(arg.added)
        return found
