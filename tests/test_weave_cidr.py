"""WEAVE_CIDR grammar: what Weave accepts, and clear errors for the rest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from plugstrip.adapters.network.weave_cidr import AddressRequest, WeaveCidrError, parse


def test_forms() -> None:
    assert parse("none") == ()
    assert parse("net:default") == (AddressRequest("default"),)
    assert parse("net:10.40.1.0/24 ip:10.40.2.7/24 10.40.3.9/16") == (
        AddressRequest("net", IPNetwork("10.40.1.0/24")),
        AddressRequest("ip", IPNetwork("10.40.2.0/24"), IPAddress("10.40.2.7")),
        AddressRequest("ip", IPNetwork("10.40.0.0/16"), IPAddress("10.40.3.9")),
    )
    assert parse("  net:default   net:10.1.0.0/16 ") == (
        AddressRequest("default"),
        AddressRequest("net", IPNetwork("10.1.0.0/16")),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("none net:default", "cannot be combined"),
        ("net:10.40.1.5/24", "host bits set"),
        ("net:banana", "expected an IPv4 CIDR"),
        ("ip:10.40.1.0/24", "not a host address"),
        ("10.40.1.255/24", "not a host address"),
        ("10.40.1.7", "expected none, net:default"),
        ("ip:300.1.1.1/24", "not an IPv4 address/len"),
        ("net:10.40.1.0/24 ip:10.40.1.7/24", "named twice"),
        ("net:default net:default", "named twice"),
        ("dhcp", "expected none"),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(WeaveCidrError) as info:
        parse(text)
    assert message in str(info.value)


@given(st.text(max_size=60))
def test_any_text_parses_or_fails_clearly(text: str) -> None:
    try:
        parse(text)
    except WeaveCidrError:
        pass
