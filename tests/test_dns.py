"""The name server's answers, without a namespace, on the real control plane (the SQLite
store): names of the asker's networks, no data for other types of them, NXDOMAIN for
single labels it does not know and for names on networks it is not on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from netaddr import IPNetwork

from plugstrip.netdrivers.control.dns import Responder, Upstreams
from plugstrip.netdrivers.control.service import NetworkService
from plugstrip.netdrivers.stores.sqlite import SqliteStore
from plugstrip.netdrivers.stores.store import EndpointMeta, NetworkSpec


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[NetworkService]:
    """holder-a and web's holder share "front"; db is alone on "back"."""
    store = SqliteStore(tmp_path / "state.db")
    front = await store.create_network(NetworkSpec("front", "plugstrip/weave"))
    back = await store.create_network(NetworkSpec("back", "plugstrip/weave"))
    await store.allocate(front.id, "holder-a", meta=EndpointMeta(name="client"))
    await store.allocate(front.id, "holder-w", meta=EndpointMeta(name="web", aliases=("www",)))
    await store.allocate(back.id, "holder-d", meta=EndpointMeta(name="db"))
    yield NetworkService(store, {})
    await store.close()


async def ask(
    service: NetworkService, name: str, rdtype: str = "A", owner: str = "holder-a"
) -> dns.message.Message:
    responder = Responder(service.resolve, owner, Upstreams((), forward=False))
    query = dns.message.make_query(name, rdtype)
    reply = await responder.reply(query, query.to_wire())
    assert reply is not None
    return dns.message.from_wire(reply)


async def test_a_name_on_a_shared_network(service: NetworkService) -> None:
    for name in ("web", "www", "WEB."):
        answer = await ask(service, name)
        assert answer.rcode() == dns.rcode.NOERROR and answer.flags & dns.flags.AA
        (rrset,) = answer.answer
        assert rrset.rdtype == dns.rdatatype.A and [r.address for r in rrset] == ["10.32.0.3"]
        assert rrset.ttl == 600


async def test_other_types_of_a_known_name_have_no_data(service: NetworkService) -> None:
    for rdtype in ("AAAA", "MX"):
        answer = await ask(service, "web", rdtype)
        assert answer.rcode() == dns.rcode.NOERROR and not answer.answer


async def test_dual_stack_names_answer_a_and_aaaa(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "six.db")
    six = await store.create_network(
        NetworkSpec(
            "six",
            "plugstrip/weave",
            IPNetwork("10.70.0.0/24"),
            ipv6=True,
            subnet6=IPNetwork("fd70::/64"),
        )
    )
    await store.allocate(six.id, "holder-a", meta=EndpointMeta(name="client"))
    await store.allocate(six.id, "holder-w", meta=EndpointMeta(name="web"))
    service = NetworkService(store, {})
    try:
        for rdtype, wanted in (("A", ["10.70.0.3"]), ("AAAA", ["fd70::3"])):
            (rrset,) = (await ask(service, "web", rdtype)).answer
            assert [r.address for r in rrset] == wanted
        both = (await ask(service, "web", "ANY")).answer
        assert {r.address for rrset in both for r in rrset} == {"10.70.0.3", "fd70::3"}
    finally:
        await store.close()


async def test_unknown_names_and_names_on_other_networks(service: NetworkService) -> None:
    for name, owner in (("db", "holder-a"), ("web", "holder-d"), ("db.example.test", "holder-a")):
        answer = await ask(service, name, owner=owner)  # no forwarding: internal only
        assert answer.rcode() == dns.rcode.NXDOMAIN and not answer.answer, (name, owner)
