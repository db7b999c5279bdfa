"""Docker's network-list filters and JSON shapes for plugstrip networks (pure logic)."""

from __future__ import annotations

import pytest
from netaddr import IPAddress, IPNetwork

from plugstrip.adapters.network import shapes
from plugstrip.netdrivers.control.service import Attachment
from plugstrip.netdrivers.stores.store import EndpointMeta, NetworkRecord

RECORD = NetworkRecord(
    "abc123" + "0" * 58,
    "front-end",
    "plugstrip/weave",
    IPNetwork("10.40.1.0/24"),
    IPAddress("10.40.1.1"),
    7,
    {},
    {"tier": "front", "team": "web"},
    False,
    1_700_000_000.0,
)


def test_filters_come_in_both_of_dockers_forms() -> None:
    assert shapes.parse_filters('{"name": ["a", "b"]}') == {"name": ["a", "b"]}
    assert shapes.parse_filters('{"name": {"a": true, "b": false}}') == {"name": ["a"]}
    assert shapes.parse_filters(None) == {} and shapes.parse_filters("") == {}
    for bad in ("{", "[1]", '{"name": 3}'):
        with pytest.raises(shapes.FilterError):
            shapes.parse_filters(bad)


@pytest.mark.parametrize(
    ("filters", "in_use", "expected"),
    [
        ({}, False, True),
        ({"name": ["front"]}, False, True),  # a part of the name, as Docker matches
        ({"name": ["back"]}, False, False),
        ({"name": ["back", "end"]}, False, True),  # any of the values
        ({"id": ["abc"]}, False, True),
        ({"id": ["bc1"]}, False, False),  # a prefix only
        ({"driver": ["plugstrip/weave"]}, False, True),
        ({"driver": ["bridge"]}, False, False),
        ({"label": ["tier"]}, False, True),
        ({"label": ["tier=front"]}, False, True),
        ({"label": ["tier=back"]}, False, False),
        ({"label!": ["tier=back"]}, False, True),
        ({"label": ["tier=front", "owner=other"]}, False, False),  # labels: all of them
        ({"label": ["tier=front", "tier"]}, False, True),
        ({"label": ["tier=front"], "driver": ["bridge"]}, False, False),  # every key
        ({"type": ["custom"]}, False, True),
        ({"type": ["builtin"]}, False, False),
        ({"scope": ["local"]}, False, True),
        ({"dangling": ["true"]}, False, True),
        ({"dangling": ["true"]}, True, False),
        ({"dangling": ["false"]}, True, True),
        ({"until": ["1800000000"]}, False, True),
        ({"until": ["2024-01-01T00:00:00Z"]}, False, True),
        ({"until": ["2023-01-01T00:00:00Z"]}, False, False),
    ],
)
def test_filters_match_as_dockers_do(
    filters: dict[str, list[str]], in_use: bool, expected: bool
) -> None:
    assert shapes.matches(RECORD, filters, in_use) is expected


def test_unknown_filters_are_refused() -> None:
    for filters in ({"colour": ["red"]}, {"until": ["yesterday"]}):
        with pytest.raises(shapes.FilterError):
            shapes.matches(RECORD, filters, False)


def test_network_and_endpoint_shapes() -> None:
    cid = "f" * 64
    attachment = Attachment(
        RECORD,
        "holder1",
        IPAddress("10.40.1.9"),
        EndpointMeta(container=cid, name="web", aliases=("www",), requested="10.40.1.9"),
    )
    shown = shapes.network(RECORD, [attachment])
    assert shown["Created"] == "2023-11-14T22:13:20Z"
    assert shown["IPAM"]["Config"] == [{"Subnet": "10.40.1.0/24", "Gateway": "10.40.1.1"}]
    assert shown["Containers"][cid] == {
        "Name": "web",
        "EndpointID": shapes.endpoint_id(attachment),
        "MacAddress": "02:42:0a:28:01:09",
        "IPv4Address": "10.40.1.9/24",
        "IPv6Address": "",
    }
    endpoint = shapes.container_endpoint(attachment, cid)
    assert endpoint["Aliases"] == ["www", cid[:12]]
    assert endpoint["IPAMConfig"] == {"IPv4Address": "10.40.1.9"}
    assert (endpoint["IPAddress"], endpoint["IPPrefixLen"]) == ("10.40.1.9", 24)
