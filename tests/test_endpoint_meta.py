"""Endpoint meta as a typed record in the JSON it always was: round trips, records of
older versions (nulls, empty lists, missing keys) and of newer ones (keys this version
does not know, kept when rewritten)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st
from netaddr import IPAddress

from plugstrip.netdrivers.stores.store import NO_META, EndpointMeta

_text = st.none() | st.text(min_size=1, max_size=8)
_texts = st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple)
_addresses = st.lists(st.integers(1, 2**32 - 1).map(lambda n: IPAddress(n, 4)), max_size=3).map(
    tuple
)
metas = st.builds(
    EndpointMeta,
    host=_text,
    ifname=_text,
    container=_text,
    name=st.text(max_size=8),
    aliases=_texts,
    groups=_texts,
    allowed=_addresses,
    requested=_text,
    requested6=_text,
    mac=_text,
)


@given(metas)
def test_meta_round_trips_through_its_json(meta: EndpointMeta) -> None:
    doc = meta.to_json()
    assert EndpointMeta.from_json(doc) == meta
    assert not [k for k, v in doc.items() if v in (None, "", [])]  # defaults left out


def test_a_record_of_an_older_version_reads_with_defaults() -> None:
    old: dict[str, object] = {"ifname": "ethps0", "aliases": [], "requested": None, "name": "web"}
    assert EndpointMeta.from_json(old) == EndpointMeta(ifname="ethps0", name="web")
    assert EndpointMeta.from_json({}) == NO_META
    assert NO_META.is_on("h1") and NO_META.is_on("h2")  # before hosts: any host's
    assert EndpointMeta(host="h1").is_on("h1") and not EndpointMeta(host="h1").is_on("h2")


def test_keys_of_a_newer_version_survive_a_rewrite() -> None:
    newer = {"host": "h1", "vlan": 7, "name": "old"}
    meta = EndpointMeta.from_json(newer)
    assert meta == EndpointMeta(host="h1", name="old")
    rewritten = replace(meta, name="").to_json(newer)
    assert rewritten == {"host": "h1", "vlan": 7}  # a field cleared is gone, vlan kept


def test_allowed_addresses_are_addresses() -> None:
    meta = EndpointMeta.from_json({"allowed": ["10.32.0.250", "fd00::fa"]})
    assert meta.allowed == (IPAddress("10.32.0.250"), IPAddress("fd00::fa"))
    assert meta.to_json() == {"allowed": ["10.32.0.250", "fd00::fa"]}
