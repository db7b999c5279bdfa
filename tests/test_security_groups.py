"""Security groups through the unchanged docker CLI and `plugstrip sg`, on both drivers on
one host (across hosts: test_multihost): TCP, UDP and ICMP allowed by a rule and refused
without one, replies to allowed traffic passing while the reverse direction is refused, a
rule revoked and allowed again while traffic runs, a rule from a CIDR, egress rules, a
container in no group unchanged, a network's default groups, `sg rm` refused while in use,
bad input refused leaving nothing, the datapath's rules gone with the last guarded
endpoint, IPv6, and a container refused where its groups cannot be enforced."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from netaddr import IPAddress

from plugstrip.netdrivers.datapath import nft, ovs_flows
from plugstrip.netdrivers.datapath.ovs import bridge_socket
from plugstrip.netdrivers.domain.security import Guarded, Policy
from tests import harness
from tests.dockerhost import DockerHost
from tests.harness import wait_for
from tests.netcheck import (
    DRIVERS,
    Networks,
    address,
    address6,
    ping6,
    plugstrip_cmd,
    reaches,
    refused_in_dockers_format,
    sleeper,
    tcp_reaches,
    udp_reaches,
    uname,
)


def sg(net: DockerHost, *args: str) -> subprocess.CompletedProcess[str]:
    out = plugstrip_cmd(net, "sg", *args, ovs=False)
    assert out.returncode == 0, out.stderr
    return out


def datapath_rules(net: DockerHost, driver: str) -> str:
    """plugstrip's nftables table (weave), or the integration bridge's flows (ovs)."""
    if driver == "plugstrip/weave":
        return net.run_in_ns("nft", "list", "table", "inet", "plugstrip").stdout
    return bridge_flows(net)


def bridge_flows(net: DockerHost) -> str:
    return subprocess.run(
        ["ovs-ofctl", "dump-flows", bridge_socket(net.ovsdb)], capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize("driver", DRIVERS)
def test_groups_allow_what_their_rules_say_and_nothing_else(
    net: DockerHost, networks: Networks, driver: str
) -> None:
    plug = networks(driver)
    db_g, web_g = uname("db"), uname("web")
    db, web, client, udp = uname("db"), uname("web"), uname("cli"), uname("udp")
    sg(net, "create", db_g)
    sg(net, "create", web_g)
    sg(net, "allow", db_g, "--from", web_g, "--proto", "tcp", "--port", "80")
    sg(net, "allow", db_g, "--from", web_g, "--proto", "udp", "--port", "9000")
    label = "io.plugstrip.security-groups"
    net.docker(
        "run", "-d", "--name", db, "--network", plug, "--label", f"{label}={db_g}",
        "busybox", "httpd", "-f", "-p", "80",
    )  # fmt: skip
    sleeper(net, udp, plug, "--label", f"{label}={db_g}")
    sleeper(net, web, plug, "--label", f"{label}={web_g}")
    net.docker("run", "-d", "--name", client, "--network", plug, "busybox", "httpd", "-f")
    shown = net.inspect(db)["NetworkSettings"]["Networks"][plug]  # type: ignore[index]
    assert shown["DriverOpts"] == {label: db_g}
    sg(net, "allow", db_g, "--from", f"{address(net, client, plug)}/32", "--proto", "icmp")

    # allowed by a rule: TCP and UDP from web, ICMP from the client's address (a CIDR)
    wait_for(lambda: tcp_reaches(net, web, db), 5, "web -> db tcp/80 not allowed")
    assert udp_reaches(net, web, udp)
    assert reaches(net, client, db)
    # refused without one
    assert not reaches(net, web, db)  # no ICMP rule for web
    assert not tcp_reaches(net, client, db)  # the client is in no group
    assert not udp_reaches(net, client, udp)
    # replies pass, the reverse direction does not: web is guarded and allows nothing
    assert not reaches(net, db, web)
    # a container in no group is open, as before groups
    assert tcp_reaches(net, db, client) and reaches(net, web, client)

    members = json.loads(sg(net, "inspect", db_g).stdout)
    assert {e["Name"] for e in members["Endpoints"]} == {db, udp}
    assert len(members["Rules"]) == 3
    listed = {row.split()[0]: row.split() for row in sg(net, "ls").stdout.splitlines()[1:]}
    assert listed[db_g][1:] == ["3", "2"] and listed[web_g][1:] == ["0", "1"]
    doctor = plugstrip_cmd(net, "doctor").stdout
    assert f"OK    security groups ({driver}): 3 guarded endpoint(s)" in doctor, doctor
    rules = datapath_rules(net, driver)
    assert ("ct state established" in rules) if driver == "plugstrip/weave" else ("ct(" in rules)

    # revoked while traffic runs, and allowed again: each takes effect at once
    sg(net, "revoke", db_g, "--from", web_g, "--proto", "tcp", "--port", "80")
    started = time.monotonic()
    wait_for(lambda: not tcp_reaches(net, web, db), 3, "revoke did not take effect")
    revoked = time.monotonic() - started
    sg(net, "allow", db_g, "--from", web_g, "--proto", "tcp", "--port", "80")
    started = time.monotonic()
    wait_for(lambda: tcp_reaches(net, web, db), 3, "allow did not take effect")
    print(f"revoke seen after {revoked:.2f} s, allow after {time.monotonic() - started:.2f} s")

    refused = plugstrip_cmd(net, "sg", "rm", db_g, ovs=False)
    assert refused.returncode != 0 and "in use" in refused.stderr
    for name in (db, udp, web, client):
        net.docker("rm", "-f", name)
    for group in (db_g, web_g):
        sg(net, "rm", group)
    assert sg(net, "ls").stdout.splitlines()[1:] == []
    # the last guarded endpoint gone: no rules of plugstrip's left in the datapath
    if driver == "plugstrip/weave":
        wait_for(lambda: not datapath_rules(net, driver), 3, "nft table left behind")
    else:
        wait_for(lambda: "ct(" not in bridge_flows(net), 3, "conntrack flows left behind")


@pytest.mark.parametrize("driver", DRIVERS)
def test_egress_rules_limit_what_a_group_sends(
    net: DockerHost, networks: Networks, driver: str
) -> None:
    """A group with egress rules sends only what they allow (to a group, to a CIDR), and
    replies come back; between two guarded endpoints both ends must allow; with its last
    egress rule revoked it sends anything again."""
    plug = networks(driver)
    app_g, db_g = uname("app"), uname("db")
    app, db, open_ = uname("app"), uname("db"), uname("open")
    sg(net, "create", app_g)
    sg(net, "create", db_g)
    sg(net, "allow", app_g, "--to", db_g, "--proto", "tcp", "--port", "80")
    label = "io.plugstrip.security-groups"
    httpd = ("busybox", "httpd", "-f", "-p", "80")
    net.docker("run", "-d", "--name", app, "--network", plug, "--label", f"{label}={app_g}", *httpd)
    net.docker("run", "-d", "--name", db, "--network", plug, "--label", f"{label}={db_g}", *httpd)
    net.docker("run", "-d", "--name", open_, "--network", plug, *httpd)  # in no group
    # the sender allows, the receiver does not (db takes nothing in yet)
    assert not tcp_reaches(net, app, db)
    sg(net, "allow", db_g, "--from", app_g, "--proto", "tcp", "--port", "80")
    wait_for(lambda: tcp_reaches(net, app, db), 5, "app -> db tcp/80 allowed by both ends")
    # egress rules: nothing else goes out, not even to an open container
    assert not tcp_reaches(net, app, open_) and not reaches(net, app, open_)
    # and what comes in is the ingress rules' business: app takes nothing
    assert not tcp_reaches(net, open_, app)
    assert tcp_reaches(net, db, open_)  # db has no egress rules: it sends anything
    sg(net, "allow", app_g, "--to", f"{address(net, open_, plug)}/32", "--proto", "icmp")
    wait_for(lambda: reaches(net, app, open_), 5, "egress to a CIDR not allowed")
    assert not tcp_reaches(net, app, open_)  # icmp only

    shown = json.loads(sg(net, "inspect", app_g).stdout)["Rules"]
    assert {"Direction": "egress", "To": db_g, "Proto": "tcp", "Ports": "80"} in shown
    doctor = plugstrip_cmd(net, "doctor")
    shows = f"OK    security groups ({driver}): 2 guarded endpoint(s) (1 with egress"
    assert shows in doctor.stdout, doctor.stderr
    assert f"OK    port bindings ({driver}): 3 port(s) bound" in doctor.stdout, doctor.stdout

    # its egress rules revoked, the group sends anything again
    sg(net, "revoke", app_g, "--to", db_g, "--proto", "tcp", "--port", "80")
    sg(net, "revoke", app_g, "--to", f"{address(net, open_, plug)}/32", "--proto", "icmp")
    wait_for(lambda: tcp_reaches(net, app, open_), 5, "egress not open again")
    for args, message in (
        (["allow", app_g, "--to", "nosuch"], "security group nosuch not found"),
        (["allow", app_g, "--from", "any", "--to", "any"], "not allowed with argument"),
        (["revoke", app_g, "--to", "any"], "has no rule to any"),
    ):
        out = plugstrip_cmd(net, "sg", *args, ovs=False)
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)
    for name in (app, db, open_):
        net.docker("rm", "-f", name)
    sg(net, "revoke", db_g, "--from", app_g, "--proto", "tcp", "--port", "80")
    for group in (app_g, db_g):
        sg(net, "rm", group)


@pytest.mark.parametrize("driver", DRIVERS)
def test_groups_on_ipv6(net: DockerHost, networks: Networks, driver: str) -> None:
    """On a dual-stack network, rules hold for IPv6 as for IPv4, and each family only its
    own: icmpv6 is not icmp, an IPv6 CIDR admits nothing over IPv4; egress rules too."""
    plug = networks(driver, "--ipv6", "--subnet", "10.74.0.0/24", "--subnet", "fd74::/64")
    db_g, web_g = uname("db"), uname("web")
    db, web, client = uname("db"), uname("web"), uname("cli")
    sg(net, "create", db_g)
    sg(net, "create", web_g)
    sg(net, "allow", db_g, "--from", web_g, "--proto", "tcp", "--port", "80")
    sg(net, "allow", db_g, "--from", web_g, "--proto", "icmpv6")
    label = "io.plugstrip.security-groups"
    httpd = ("busybox", "httpd", "-f", "-p", "80")
    net.docker("run", "-d", "--name", db, "--network", plug, "--label", f"{label}={db_g}", *httpd)
    sleeper(net, web, plug, "--label", f"{label}={web_g}")
    net.docker("run", "-d", "--name", client, "--network", plug, *httpd)  # in no group
    db6, web6, client6 = (address6(net, c, plug) for c in (db, web, client))
    db4 = address(net, db, plug)  # a name may resolve to either family: addresses here

    wait_for(lambda: tcp_reaches(net, web, db6), 5, "web -> db tcp/80 over IPv6")
    assert ping6(net, web, db6)
    assert tcp_reaches(net, web, db4)  # the same rule in IPv4
    assert not reaches(net, web, db4)  # icmpv6 is not icmp
    assert not tcp_reaches(net, client, db6) and not ping6(net, client, db6)  # no rule
    assert not ping6(net, db, web6)  # web takes nothing in
    assert ping6(net, db, client6) and tcp_reaches(net, web, client6)  # no group: open

    sg(net, "allow", db_g, "--from", f"{client6}/128", "--proto", "tcp", "--port", "80")
    wait_for(lambda: tcp_reaches(net, client, db6), 5, "an IPv6 CIDR not allowed")
    assert not tcp_reaches(net, client, db4)  # nor over IPv4

    sg(net, "allow", web_g, "--to", db_g, "--proto", "tcp", "--port", "80")  # web: egress
    wait_for(lambda: not tcp_reaches(net, web, client6), 5, "IPv6 egress not limited")
    assert tcp_reaches(net, web, db6) and not ping6(net, web, client6)
    for name in (db, web, client):
        net.docker("rm", "-f", name)
    sg(net, "revoke", db_g, "--from", web_g, "--proto", "tcp", "--port", "80")
    sg(net, "revoke", db_g, "--from", web_g, "--proto", "icmpv6")
    sg(net, "revoke", web_g, "--to", db_g, "--proto", "tcp", "--port", "80")
    for group in (db_g, web_g):
        sg(net, "rm", group)


def test_network_default_groups_and_bad_input(net: DockerHost, networks: Networks) -> None:
    group = uname("g")
    sg(net, "create", group)
    plug = networks("plugstrip/weave", "--opt", f"security-groups={group}")
    box = uname("box")
    sleeper(net, box, plug)
    shown = net.inspect(box)["NetworkSettings"]["Networks"][plug]  # type: ignore[index]
    assert shown["DriverOpts"] == {"io.plugstrip.security-groups": group}
    wait_for(lambda: bool(datapath_rules(net, "plugstrip/weave")), 3, "box is not guarded")
    state = lambda: (  # noqa: E731
        net.leftovers(),
        sg(net, "inspect", group).stdout,
        datapath_rules(net, "plugstrip/weave"),
    )
    before = state()
    label = "io.plugstrip.security-groups=nosuch"
    refused_in_dockers_format(
        net,
        [
            (["run", "--rm", "--network", plug, "--label", label, "busybox", "true"], "nosuch"),
            (
                [
                    "network",
                    "create",
                    "-d",
                    "plugstrip/ovs",
                    "--opt",
                    "security-groups=nosuch",
                    "x",
                ],
                "security group nosuch not found",
            ),
        ],
    )
    for args, message in (
        (["allow", group, "--from", "any", "--proto", "tcp", "--port", "99999"], "invalid port"),
        (["allow", group, "--from", "10.1.2.3/8"], "host bits set"),
        (["allow", group, "--from", "10.1.2.0/40"], "invalid CIDR"),
        (["allow", group, "--from", "nosuch", "--proto", "tcp"], "nosuch not found"),
        (["allow", "nosuch", "--from", "any"], "security group nosuch not found"),
        (["revoke", group, "--from", "any"], "has no rule"),
        (["create", group], "already exists"),
        (["rm", "nosuch"], "not found"),
    ):
        out = plugstrip_cmd(net, "sg", *args, ovs=False)
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)
    assert state() == before
    net.docker("rm", "-f", box)
    sg(net, "rm", group)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_container_whose_groups_cannot_be_enforced_is_refused(
    net: DockerHost, networks: Networks, driver: str, tmp_path: Path
) -> None:
    """Fails closed: where the datapath's tool fails (a kernel without nf_tables, a switch
    refusing flows), a container in a group is refused with the reason and nothing is
    made; so is one in no group, whose port could not be bound to its addresses. The tool
    is the only part replaced."""
    tool = "nft" if driver == "plugstrip/weave" else "ovs-ofctl"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / tool).write_text("#!/bin/sh\necho 'Error: Operation not supported' >&2\nexit 1\n")
    (fake / tool).chmod(0o755)
    group = uname("g")
    sg(net, "create", group)
    plug = networks(driver)
    guarding = networks(driver, "--opt", f"security-groups={group}")
    guarded, open_box, other, kept = uname("guarded"), uname("open"), uname("other"), uname("kept")
    sleeper(net, open_box, plug)
    sleeper(net, kept, plug, "--label", f"io.plugstrip.security-groups={group}")
    before = net.leftovers()
    net.stop_plugstrip()
    net.start_plugstrip(env={"PATH": f"{fake}:{os.environ['PATH']}"})
    try:
        label = f"io.plugstrip.security-groups={group}"
        run = ["run", "-d", "--name", guarded, "--network", plug, "--label", label]
        reason = f"security groups {group} cannot be enforced here"
        refused_in_dockers_format(
            net,
            [
                ([*run, "busybox", "sleep", "1d"], reason),
                (["network", "connect", guarding, open_box], reason),
            ],
        )
        assert (
            "Operation not supported"
            in net.docker(*run, "busybox", "true", check=False).stderr.decode()
        )
        # nothing made: no container, no address, no holder, no interface
        names = harness.docker(net.daemon, "ps", "-a", "--format", "{{.Names}}").stdout.decode()
        assert guarded not in names.split()
        assert list(net.inspect(open_box)["NetworkSettings"]["Networks"]) == [plug]  # type: ignore[index]
        assert net.leftovers() == before
        # a container in no group neither: its port would leave unbound
        unbound = ["run", "-d", "--name", other, "--network", plug, "busybox", "sleep", "1d"]
        binding = "its port's binding to its addresses cannot be enforced here"
        refused_in_dockers_format(net, [(unbound, binding)])
        assert net.leftovers() == before
        # the start-up reconciliation could not re-plug kept, and went on to follow the
        # daemon's events (not retried every second, each time stopping at kept)
        harness.docker(net.daemon, "run", "-d", "--name", other, "busybox", "sleep", "1d")
        harness.docker(net.daemon, "rm", "-f", other)
        wait_for(lambda: net.leftovers() == before, 10, "the event of a removal not handled")
        assert net.ps is not None and "event stream dropped" not in net.ps.log.read_text()
    finally:
        net.stop_plugstrip()
        net.start_plugstrip()
    # the tool back: the same container is made, and guarded (a group with no rules)
    sleeper(net, guarded, plug, "--label", f"io.plugstrip.security-groups={group}")
    assert not reaches(net, open_box, guarded) and reaches(net, guarded, open_box)
    for name in (guarded, open_box, kept):
        net.docker("rm", "-f", name)
    sg(net, "rm", group)


def stale_datapath(net: DockerHost, driver: str, stale: str) -> None:
    """What a crash or a hand leaves: the datapath guards ``stale`` (no endpoint of the
    store's) and not the host's real guarded endpoint, programmed with plugstrip's own
    rendering so it is a datapath plugstrip could have written."""
    drifted = Policy((Guarded(IPAddress(stale), ()),))
    if driver == "plugstrip/weave":
        cmd = ["nsenter", f"--net={net.netns_path}", "nft", "-f", "-"]
        text = nft.Table("inet", nft.TABLE).script(nft.rules(drifted))
    else:
        cmd = ["ovs-ofctl", "-O", "OpenFlow13", "replace-flows", bridge_socket(net.ovsdb), "-"]
        text = "\n".join(ovs_flows.flows(drifted)) + "\n"
    subprocess.run(cmd, input=text, text=True, check=True, capture_output=True)


@pytest.mark.parametrize("driver", DRIVERS)
def test_doctor_finds_a_drifted_datapath_and_a_restart_mends_it(
    net: DockerHost, networks: Networks, driver: str
) -> None:
    """`plugstrip doctor` reads the datapath against the store: a guarded endpoint's
    rules missing and a stale one's there fail it; the start-up reconciliation rebuilds
    the datapath from the store, so after a restart the stale rules are gone and the
    endpoint is guarded again."""
    group = uname("g")
    sg(net, "create", group)
    plug = networks(driver)
    box, other = uname("box"), uname("oth")
    sleeper(net, box, plug, "--label", f"io.plugstrip.security-groups={group}")
    sleeper(net, other, plug)
    ip, stale = address(net, box, plug), "10.254.254.9"
    check = f"security groups ({driver})"
    assert f"OK    {check}: 1 guarded endpoint(s)" in plugstrip_cmd(net, "doctor").stdout
    assert not reaches(net, other, box)

    stale_datapath(net, driver, stale)
    assert reaches(net, other, box)  # what doctor must see: box open
    doctor = plugstrip_cmd(net, "doctor")
    assert doctor.returncode != 0
    assert f"FAIL  {check}: missing ['in {ip}'], extra ['in {stale}']" in doctor.stdout, doctor

    net.stop_plugstrip()
    net.start_plugstrip()
    wait_for(lambda: not reaches(net, other, box), 5, "box not guarded after a restart")
    assert stale not in datapath_rules(net, driver)
    assert f"OK    {check}: 1 guarded endpoint(s)" in plugstrip_cmd(net, "doctor").stdout
    for name in (box, other):
        net.docker("rm", "-f", name)
    sg(net, "rm", group)
