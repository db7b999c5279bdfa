"""The name server's answers, without a namespace: names of the asker's networks, no data
for other types of them, NXDOMAIN for single labels it does not know."""

from __future__ import annotations

from ipaddress import IPv4Address

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from netdrivers.dns import Responder, Upstreams

NAMES = {("holder-a", "web"): [IPv4Address("10.40.1.2")]}


async def resolve(owner: str, name: str) -> list[IPv4Address]:
    return NAMES.get((owner, name), [])


async def ask(name: str, rdtype: str = "A", owner: str = "holder-a") -> dns.message.Message:
    responder = Responder(resolve, owner, Upstreams((), forward=False))
    query = dns.message.make_query(name, rdtype)
    reply = await responder.reply(query, query.to_wire())
    assert reply is not None
    return dns.message.from_wire(reply)


async def test_a_name_on_a_shared_network() -> None:
    answer = await ask("web")
    assert answer.rcode() == dns.rcode.NOERROR and answer.flags & dns.flags.AA
    (rrset,) = answer.answer
    assert rrset.rdtype == dns.rdatatype.A and [r.address for r in rrset] == ["10.40.1.2"]
    assert rrset.ttl == 600


async def test_other_types_of_a_known_name_have_no_data() -> None:
    answer = await ask("web", "AAAA")
    assert answer.rcode() == dns.rcode.NOERROR and not answer.answer


async def test_unknown_names_and_other_askers() -> None:
    for name, owner in (("db", "holder-a"), ("web", "holder-b"), ("db.example.test", "holder-a")):
        answer = await ask(name, owner=owner)  # no forwarding: internal networks only
        assert answer.rcode() == dns.rcode.NXDOMAIN and not answer.answer, (name, owner)
