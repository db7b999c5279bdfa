"""IPAM decisions: unit and property tests (no network, no store)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers.domain.errors import Conflict, Exhausted, Invalid, NetworkError
from plugstrip.netdrivers.domain.ipam import (
    DEFAULT_PREFIX6,
    DEFAULT_RANGE6,
    check_pair,
    check_subnet,
    choose_address,
    choose_subnet,
    gateway_of,
    paired,
    parse_subnet,
    requested_pair,
)

POOL = IPNetwork("10.32.0.0/20")  # 16 /24s: small enough to check against brute force


def overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return a.first <= b.last and b.first <= a.last


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.40.1.0", "give a prefix length"),
        ("10.40.1.5/24", "host bits set (did you mean 10.40.1.0/24?)"),
        ("10.40.1.0/31", "/30 is the smallest"),
        ("nonsense", "expected an IPv4 CIDR"),
        ("300.1.1.0/24", "expected an IPv4 CIDR"),
        ("fd00::/64", "expected an IPv4 CIDR"),
    ],
)
def test_parse_subnet_errors(text: str, message: str) -> None:
    with pytest.raises(NetworkError) as info:
        parse_subnet(text)
    assert isinstance(info.value, Invalid) and message in str(info.value)


def test_parse_subnet_ok() -> None:
    assert parse_subnet("10.40.1.0/24") == IPNetwork("10.40.1.0/24")


def test_overlap_is_a_conflict_naming_the_other() -> None:
    with pytest.raises(NetworkError) as info:
        check_subnet(IPNetwork("10.32.1.0/24"), [IPNetwork("10.32.0.0/16")])
    assert isinstance(info.value, Conflict) and "10.32.0.0/16" in str(info.value)
    check_subnet(IPNetwork("10.33.0.0/24"), [IPNetwork("10.32.0.0/16")])


def test_subnets_come_in_order_and_are_reclaimed() -> None:
    taken: list[IPNetwork] = []
    for i in range(16):
        subnet = choose_subnet(taken, POOL)
        assert subnet == IPNetwork(f"10.32.{i}.0/24")
        taken.append(subnet)
    with pytest.raises(NetworkError) as info:
        choose_subnet(taken, POOL)
    assert isinstance(info.value, Exhausted)
    taken.remove(IPNetwork("10.32.7.0/24"))  # a network removed: its subnet is free again
    assert choose_subnet(taken, POOL) == IPNetwork("10.32.7.0/24")


subnets_in_pool = st.lists(
    st.builds(
        lambda i, p: IPNetwork(f"10.32.{i}.0/{p}").cidr,
        st.integers(0, 15),
        st.sampled_from([20, 22, 23, 24, 25, 28]),
    ),
    max_size=12,
)


@given(subnets_in_pool, st.sampled_from([22, 24, 26]))
def test_choose_subnet_is_the_lowest_free(taken: list[IPNetwork], prefix: int) -> None:
    candidates = list(POOL.subnet(prefix))
    free = [c for c in candidates if not any(overlaps(c, t) for t in taken)]
    if free:
        assert choose_subnet(taken, POOL, prefix) == free[0]
    else:
        with pytest.raises(NetworkError):
            choose_subnet(taken, POOL, prefix)


def test_addresses_until_exhausted() -> None:
    subnet = IPNetwork("10.40.1.0/29")  # hosts .1-.6; .1 is the gateway
    gw = gateway_of(subnet)
    assert gw == IPAddress("10.40.1.1")
    taken: list[IPAddress] = []
    for _ in range(5):
        taken.append(choose_address(subnet, gw, {int(ip) for ip in taken}.__contains__))
    assert [str(ip) for ip in taken] == [f"10.40.1.{i}" for i in range(2, 7)]
    with pytest.raises(NetworkError) as info:
        choose_address(subnet, gw, {int(ip) for ip in taken}.__contains__)
    assert isinstance(info.value, Exhausted)


@pytest.mark.parametrize(
    ("requested", "category", "message"),
    [
        ("10.40.2.7", Invalid, "not a usable address of subnet 10.40.1.0/24"),
        ("10.40.1.0", Invalid, "not a usable address"),
        ("10.40.1.255", Invalid, "not a usable address"),
        ("10.40.1.1", Conflict, "is the gateway"),
        ("10.40.1.9", Conflict, "is in use"),
    ],
)
def test_requested_address_errors(
    requested: str, category: type[NetworkError], message: str
) -> None:
    subnet = IPNetwork("10.40.1.0/24")
    with pytest.raises(NetworkError) as info:
        choose_address(
            subnet,
            gateway_of(subnet),
            {int(IPAddress("10.40.1.9"))}.__contains__,
            IPAddress(requested),
        )
    assert isinstance(info.value, category) and message in str(info.value)


@given(st.sets(st.integers(2, 30), max_size=29), st.none() | st.integers(0, 31))
def test_address_is_free_usable_and_lowest(taken_hosts: set[int], requested: int | None) -> None:
    subnet = IPNetwork("10.40.1.0/27")
    gw = gateway_of(subnet)
    taken = [IPAddress(subnet.first + h) for h in taken_hosts]
    want = IPAddress(subnet.first + requested) if requested is not None else None
    try:
        got = choose_address(subnet, gw, {int(ip) for ip in taken}.__contains__, want)
    except NetworkError as exc:
        if want is None:
            assert isinstance(exc, Exhausted) and len(taken_hosts) == 29
        else:
            assert requested in (0, 1, 31) or requested in taken_hosts
        return
    assert got not in taken and got != gw and subnet.first < int(got) < subnet.last
    if want is None:
        assert int(got) - subnet.first == min(set(range(2, 31)) - taken_hosts)
    else:
        assert got == want


@given(st.sets(st.integers(2, 30), max_size=29), st.integers(0, 31))
def test_next_fit_takes_the_first_free_after_the_last_one_handed_out(
    taken_hosts: set[int], after: int
) -> None:
    subnet = IPNetwork("10.40.1.0/27")
    taken = {subnet.first + h for h in taken_hosts}
    free = sorted(set(range(2, 31)) - taken_hosts)
    try:
        got = choose_address(
            subnet, gateway_of(subnet), taken.__contains__, None, subnet.first + after
        )
    except NetworkError as exc:
        assert isinstance(exc, Exhausted) and not free
        return
    later = [h for h in free if h > after] if 1 <= after < 31 else free
    assert int(got) - subnet.first == (later or free)[0]


# ---- dual-stack: IPv6 paired with IPv4 by host number --------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fd70::", "give a prefix length"),
        ("fd70::1/64", "host bits set (did you mean fd70::/64?)"),
        ("fd70::/124", "/120 is the smallest"),
        ("10.0.0.0/24", "expected an IPv6 CIDR"),
        ("fd70::zz/64", "expected an IPv6 CIDR"),
    ],
)
def test_parse_subnet6_errors(text: str, message: str) -> None:
    with pytest.raises(NetworkError) as info:
        parse_subnet(text, 6)
    assert isinstance(info.value, Invalid) and message in str(info.value)


def test_a_pool6_gives_64s_in_order() -> None:
    first = choose_subnet([], DEFAULT_RANGE6, DEFAULT_PREFIX6)
    assert first == IPNetwork("fd70:6c75:6773::/64")
    assert choose_subnet([first], DEFAULT_RANGE6, DEFAULT_PREFIX6) == IPNetwork(
        "fd70:6c75:6773:1::/64"
    )


def test_pairs_check_sizes_and_gateways() -> None:
    v4, v6 = IPNetwork("10.70.0.0/24"), IPNetwork("fd70::/64")
    check_pair(v4, IPAddress("10.70.0.1"), v6, None)
    check_pair(v4, IPAddress("10.70.0.254"), v6, IPAddress("fd70::fe"))
    for subnet6, gateway6, message in (
        (IPNetwork("fd70::/121"), None, "smaller than IPv4 subnet"),
        (v6, IPAddress("fd70::9"), "it is fd70::1"),
    ):
        with pytest.raises(NetworkError) as info:
            check_pair(v4, IPAddress("10.70.0.1"), subnet6, gateway6)
        assert isinstance(info.value, Invalid) and message in str(info.value)


def test_requested_pairs() -> None:
    v4, v6 = IPNetwork("10.70.0.0/24"), IPNetwork("fd70::/64")
    assert requested_pair(v4, v6, None, IPAddress("fd70::99")) == IPAddress("10.70.0.153")
    assert requested_pair(v4, v6, IPAddress("10.70.0.9"), None) == IPAddress("10.70.0.9")
    assert requested_pair(v4, v6, IPAddress("10.70.0.9"), IPAddress("fd70::9")) == IPAddress(
        "10.70.0.9"
    )
    for requested, requested6, message in (
        (None, IPAddress("fd99::1"), "does not belong"),
        (None, IPAddress("fd70::100"), "beyond IPv4 subnet"),
        (IPAddress("10.70.0.7"), IPAddress("fd70::8"), "differ in host number"),
    ):
        with pytest.raises(NetworkError) as info:
            requested_pair(v4, v6, requested, requested6)
        assert message in str(info.value)


@given(st.integers(0, 65535), st.integers(8, 30))
def test_pairing_is_one_to_one_both_ways(host: int, prefix: int) -> None:
    v4 = IPNetwork(f"10.0.0.0/{prefix}")
    v6 = IPNetwork("fd70::/64")
    address = IPAddress(v4.first + host % v4.size)
    twin = paired(address, v4, v6)
    assert twin in v6 and paired(twin, v6, v4) == address
