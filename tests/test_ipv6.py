"""Dual-stack plugstrip networks through the unchanged docker CLI, on both drivers: both
addresses for every endpoint (IPv6 paired with IPv4 by host number, ``--ip6`` honoured),
names answering A and AAAA, ping6 and TCP over IPv6 by name, isolation between networks
in IPv6 as in IPv4, Docker's shapes in inspect, and bad input refused, leaving nothing.
Across hosts: test_multihost."""

from __future__ import annotations

import json
from typing import Any

import pytest
from netaddr import IPAddress, IPNetwork

from tests.dockerhost import DockerHost
from tests.netcheck import (
    DRIVERS,
    Networks,
    in_container,
    ping6,
    refused_in_dockers_format,
    sleeper,
    uname,
)


def endpoint(net: DockerHost, container: str, network: str) -> dict[str, Any]:
    return net.inspect(container)["NetworkSettings"]["Networks"][network]  # type: ignore[index,no-any-return]


def aaaa(net: DockerHost, src: str, name: str) -> str:
    return in_container(net, src, "nslookup", "-type=aaaa", name).stdout.decode()


@pytest.mark.parametrize("driver", DRIVERS)
def test_dual_stack_network_by_name_and_isolated(
    net: DockerHost, networks: Networks, driver: str
) -> None:
    v6 = networks(driver, "--ipv6", "--subnet", "10.70.0.0/24", "--subnet", "fd70::/64")
    other = networks(driver, "--ipv6")  # its IPv6 subnet a /64 of plugstrip's pool
    doc = json.loads(net.docker("network", "inspect", v6).stdout)[0]
    assert doc["EnableIPv6"] is True
    assert doc["IPAM"]["Config"] == [
        {"Subnet": "10.70.0.0/24", "Gateway": "10.70.0.1"},
        {"Subnet": "fd70::/64", "Gateway": "fd70::1"},
    ]
    pooled = json.loads(net.docker("network", "inspect", other).stdout)[0]["IPAM"]["Config"]
    assert IPNetwork(pooled[1]["Subnet"]) in IPNetwork("fd70:6c75:6773::/48")
    assert IPNetwork(pooled[1]["Subnet"]).prefixlen == 64

    web, client, pinned, stranger = uname("web"), uname("cli"), uname("pin"), uname("str")
    net.docker("run", "-d", "--name", web, "--network", v6, "busybox", "httpd", "-f", "-vv")
    sleeper(net, client, v6)
    sleeper(net, pinned, v6, "--ip6", "fd70::99")
    net.docker("run", "-d", "--name", stranger, "--network", other, "busybox", "httpd", "-f")

    shown = endpoint(net, web, v6)
    host_number = int(IPAddress(shown["IPAddress"])) - int(IPAddress("10.70.0.0"))
    assert shown["GlobalIPv6Address"] == str(IPAddress(int(IPAddress("fd70::")) + host_number, 6))
    assert shown["GlobalIPv6PrefixLen"] == 64 and shown["IPv6Gateway"] == "fd70::1"
    web6 = shown["GlobalIPv6Address"]
    pin = endpoint(net, pinned, v6)
    assert pin["GlobalIPv6Address"] == "fd70::99" and pin["IPAddress"] == "10.70.0.153"
    assert pin["IPAMConfig"] == {"IPv6Address": "fd70::99"}
    members = json.loads(net.docker("network", "inspect", v6).stdout)[0]["Containers"]
    assert f"{web6}/64" in {m["IPv6Address"] for m in members.values()}
    assert "fd70::99/64" in in_container(net, pinned, "ip", "-6", "addr").stdout.decode()

    # names answer AAAA too; ping6 and TCP over IPv6 by name
    assert web6 in aaaa(net, client, web)
    assert ping6(net, client, web) and ping6(net, web, pinned)
    fetched = in_container(
        net, client, "sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {web} 80"
    )
    assert fetched.stdout.startswith(b"HTTP/1.")
    client6 = endpoint(net, client, v6)["GlobalIPv6Address"]
    assert client6 in net.docker("logs", web).stderr.decode()  # httpd saw the IPv6 peer

    # isolation: nothing across networks, in IPv6 as in IPv4
    stranger6 = endpoint(net, stranger, other)["GlobalIPv6Address"]
    assert not ping6(net, client, stranger6)
    assert stranger6 not in aaaa(net, client, stranger)
    assert not ping6(net, stranger, web6)


def test_dual_stack_bad_input_is_refused_and_leaves_nothing(
    net: DockerHost, networks: Networks
) -> None:
    v6 = networks("plugstrip/weave", "--ipv6", "--subnet", "10.71.0.0/24", "--subnet", "fd71::/64")
    v4 = networks("plugstrip/ovs")
    sleeper(net, uname("held"), v6, "--ip", "10.71.0.5")
    before = (net.leftovers(), net.docker("network", "ls", "-q").stdout)
    create = ["network", "create", "-d", "plugstrip/weave"]
    run = ["run", "--rm", "--network", v6]
    cases = [
        (
            [*create, "--ipv6", "--subnet", "fd72::/64", "--subnet", "fd73::/64", "x1"],
            "doesn't support multiple subnets",
        ),
        ([*create, "--ipv6", "--subnet", "fd71::/63", "x1"], "overlaps fd71::/64"),
        ([*create, "--subnet", "fd74::/64", "x1"], "given without --ipv6"),
        ([*create, "--ipv6", "--subnet", "fd74::zz/64", "x1"], "invalid subnet"),
        ([*create, "--ipv6", "--subnet", "fd74::1/64", "x1"], "host bits set"),
        ([*create, "--ipv6", "--subnet", "fd74::/124", "x1"], "/120 is the smallest"),
        (
            [*create, "--ipv6", "--subnet", "10.74.0.0/16", "--subnet", "fd74::/120", "x1"],
            "smaller than IPv4 subnet",
        ),
        (
            [
                *create,
                "--ipv6",
                "--subnet",
                "10.74.0.0/24",
                "--gateway",
                "10.74.0.1",
                "--subnet",
                "fd74::/64",
                "--gateway",
                "fd74::9",
                "x1",
            ],
            "IPv6 gateway fd74::9",
        ),
        ([*run, "--ip6", "fd71::zz", "busybox", "true"], "invalid IPv6 address: fd71::zz"),
        ([*run, "--ip6", "fd99::5", "busybox", "true"], "does not belong to any of this network"),
        ([*run, "--ip6", "fd71::1:0", "busybox", "true"], "beyond IPv4 subnet"),
        ([*run, "--ip6", "fd71::5", "busybox", "true"], "in use"),
        (
            [*run, "--ip", "10.71.0.7", "--ip6", "fd71::8", "busybox", "true"],
            "differ in host number",
        ),
        (["run", "--rm", "--network", v4, "--ip6", "fd71::8", "busybox", "true"], "no IPv6"),
    ]
    refused_in_dockers_format(net, cases)
    assert (net.leftovers(), net.docker("network", "ls", "-q").stdout) == before
