"""An endpoint is never reachable unguarded or unbound: its port's binding and its groups'
rules are in its driver's datapath before it is plugged in, and if they cannot be put
there it is not plugged in and holds nothing. The real service and SQLite store, over a
driver that records its calls (through the CLI, with a datapath tool that fails:
test_security_groups)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from netaddr import IPAddress

from plugstrip.netdrivers.control.service import NetworkService, PolicyUnavailable
from plugstrip.netdrivers.datapath.testkit import RecordingDriver
from plugstrip.netdrivers.domain.security import Policy
from plugstrip.netdrivers.stores.sqlite import SqliteStore
from plugstrip.netdrivers.stores.store import EndpointMeta, NetworkSpec

DRIVER = "plugstrip/weave"
NETNS = "/proc/1/ns/net"


class FailingPolicyDriver(RecordingDriver):
    """Programs no policy (no nft, no ofctl here) while ``failing``."""

    failing = False

    async def set_policy(self, policy: Policy) -> None:
        if self.failing:
            raise RuntimeError("nft: Operation not supported")
        await super().set_policy(policy)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[NetworkService]:
    made = NetworkService(SqliteStore(tmp_path / "state.db"), {DRIVER: FailingPolicyDriver(DRIVER)})
    await made.start()
    yield made
    await made.close()


def recorded(service: NetworkService) -> FailingPolicyDriver:
    driver = service.drivers[DRIVER]
    assert isinstance(driver, FailingPolicyDriver)
    return driver


def policy_when_joined(driver: RecordingDriver, owner: str) -> Policy:
    """The last policy programmed before ``owner``'s join."""
    last = Policy()
    for call, _, arg in driver.calls:
        if call == "policy" and isinstance(arg, Policy):
            last = arg
        if call == "join" and arg == owner:
            return last
    raise AssertionError(f"{owner} never joined: {driver.calls}")


def guarded_when_joined(driver: RecordingDriver, owner: str) -> list[IPAddress]:
    """The addresses the last policy before ``owner``'s join guarded."""
    return [g.address for g in policy_when_joined(driver, owner).guarded]


async def test_a_grouped_endpoint_is_guarded_before_it_is_plugged(
    service: NetworkService,
) -> None:
    record = await service.create_network(NetworkSpec("n", DRIVER))
    await service.create_group("db")
    db = await service.attach(record, "holder-db", NETNS, meta=EndpointMeta(groups=("db",)))
    assert guarded_when_joined(recorded(service), "holder-db") == [db.address]

    # and again when it is plugged into a new namespace (its holder restarted)
    recorded(service).calls.clear()
    await service.replug("holder-db", NETNS)
    assert guarded_when_joined(recorded(service), "holder-db") == [db.address]

    # an endpoint in no group is bound to its addresses before it is plugged in
    recorded(service).calls.clear()
    opened = await service.attach(record, "holder-open", NETNS)
    assert [c for c, _, _ in recorded(service).calls] == ["policy", "join"]
    bound = policy_when_joined(recorded(service), "holder-open").bindings
    [mine] = [b for b in bound if b.owner == "holder-open"]
    assert opened.address in mine.addresses and mine.mac == opened.mac


async def test_an_endpoint_whose_groups_cannot_be_enforced_is_refused_holding_nothing(
    service: NetworkService,
) -> None:
    record = await service.create_network(NetworkSpec("n", DRIVER))
    await service.create_group("db")
    recorded(service).failing = True
    with pytest.raises(PolicyUnavailable, match="security groups db cannot be enforced here"):
        await service.attach(record, "holder-db", NETNS, meta=EndpointMeta(groups=("db",)))
    assert "join" not in [c for c, _, _ in recorded(service).calls]
    assert await service.attachments() == []  # its address is free again

    # nor an endpoint in no group: its port could not be bound to its addresses
    with pytest.raises(PolicyUnavailable, match="its port's binding to its addresses"):
        await service.attach(record, "holder-open", NETNS)
    assert await service.attachments() == []

    # made while it could be guarded, then re-plugged when it cannot: not plugged in
    recorded(service).failing = False
    await service.attach(record, "holder-db", NETNS, meta=EndpointMeta(groups=("db",)))
    recorded(service).failing = True
    recorded(service).calls.clear()
    with pytest.raises(PolicyUnavailable):
        await service.replug("holder-db", NETNS)
    assert "join" not in [c for c, _, _ in recorded(service).calls]
