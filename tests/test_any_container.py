"""plugstrip networks for any container, beside Docker's own networks, through the
unchanged docker CLI and docker-compose, on both drivers: ``docker network connect`` of
containers made on Docker's bridge, on a user-defined Docker network, with ``--network
none``, running or stopped (plugged in their own namespace, kept over restarts), and
containers on plugstrip networks that join Docker's networks too (their holder does).

What a container reaches is checked from inside it, by name; what it is on, as
``docker inspect`` shows it; what is left after, as the machine has it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests import harness
from tests.dockerhost import DockerHost
from tests.harness import wait_for
from tests.netcheck import (
    DRIVERS,
    Networks,
    address,
    in_container,
    plugstrip_cmd,
    reaches,
    sleeper,
    tcp_reaches,
    uname,
)


def run(net: DockerHost, name: str, *options: str, cmd: tuple[str, ...] = ()) -> None:
    net.docker("run", "-d", "--name", name, *options, "busybox", *(cmd or ("sleep", "1d")))


def shown_networks(net: DockerHost, name: str) -> dict[str, dict[str, object]]:
    return net.inspect(name)["NetworkSettings"]["Networks"]  # type: ignore[index,no-any-return]


def resolv(net: DockerHost, name: str) -> str:
    return in_container(net, name, "cat", "/etc/resolv.conf").stdout.decode()


@pytest.mark.parametrize("driver", DRIVERS)
def test_connect_a_running_bridge_container_and_keep_it_over_restart(
    net: DockerHost, networks: Networks, driver: str
) -> None:
    plug = networks(driver)
    peer, box = uname("peer"), uname("box")
    sleeper(net, peer, plug)
    run(net, box)  # on Docker's default bridge
    before = net.leftovers()
    net.docker("network", "connect", "--alias", "boxy", plug, box)
    ip = address(net, box, plug)
    shown = shown_networks(net, box)
    assert set(shown) == {"bridge", plug}  # Docker's network kept, plugstrip's beside it
    assert shown["bridge"]["IPAddress"] and shown[plug]["NetworkID"]
    assert "boxy" in shown[plug]["Aliases"]  # type: ignore[operator]
    assert ip in in_container(net, box, "ip", "-4", "-o", "addr", "show", "ethps0").stdout.decode()
    members = json.loads(net.docker("network", "inspect", plug).stdout)[0]["Containers"]
    assert {m["Name"] for m in members.values()} == {peer, box}
    # no holder: the container's own namespace was plugged
    assert net.leftovers()[1] == before[1]
    operator = json.loads(plugstrip_cmd(net, "net", "inspect", plug).stdout)["Endpoints"]
    mine = next(e for e in operator if e["name"] == box)
    assert (
        mine["holder"] is None and mine["interface"] == "ethps0" and mine["address"] == f"{ip}/24"
    )
    # by name both ways; the bridge still takes it out
    assert reaches(net, box, peer)
    assert reaches(net, peer, box) and reaches(net, peer, "boxy")
    gateway = str(shown["bridge"]["Gateway"])
    assert reaches(net, box, gateway)

    net.docker("restart", box)  # a new namespace: plugged before `restart` returns
    assert address(net, box, plug) == ip
    assert reaches(net, box, peer) and reaches(net, peer, box)
    net.docker("stop", box)
    net.docker("start", box)
    assert address(net, box, plug) == ip
    assert reaches(net, box, peer)

    net.docker("network", "disconnect", plug, box)
    assert set(shown_networks(net, box)) == {"bridge"}
    assert not reaches(net, peer, ip)
    assert "127.0.0.12" not in resolv(net, box)  # its resolvers back as dockerd wrote them
    assert in_container(net, box, "ip", "link", "show", "ethps0").returncode != 0
    again = net.docker("network", "disconnect", plug, box, check=False)
    assert again.returncode != 0 and b"is not connected" in again.stderr
    net.docker("rm", "-f", box)
    assert net.leftovers() == before


def test_connect_stopped_none_and_docker_network_containers(
    net: DockerHost, networks: Networks
) -> None:
    plug, dnet = networks(), networks("bridge")
    peer, none, dbox, dpeer = uname("peer"), uname("none"), uname("dbox"), uname("dpeer")
    sleeper(net, peer, plug)
    before = net.allocations()

    # --network none, connected while stopped: plugged when it starts
    net.docker("create", "--name", none, "--network", "none", "busybox", "sleep", "1d")
    net.docker("network", "connect", plug, none)
    assert set(shown_networks(net, none)) == {"none", plug}
    assert shown_networks(net, none)[plug]["IPAddress"]
    net.docker("start", none)
    assert reaches(net, none, peer) and reaches(net, peer, none)

    # a user-defined Docker network: both networks' names answer in the container
    run(net, dpeer, "--network", dnet)
    run(net, dbox, "--network", dnet)
    net.docker("network", "connect", plug, dbox)
    assert set(shown_networks(net, dbox)) == {dnet, plug}
    assert reaches(net, dbox, peer) and reaches(net, dbox, dpeer)
    assert reaches(net, peer, dbox) and reaches(net, dpeer, dbox)

    # host mode and a shared namespace are refused as Docker refuses them
    host_box = uname("host")
    net.docker("create", "--name", host_box, "--network", "host", "busybox", "true")
    refused = net.docker("network", "connect", plug, host_box, check=False)
    assert refused.returncode != 0 and b"host network" in refused.stderr
    missing = net.docker("network", "connect", plug, "no-such-box", check=False)
    assert missing.returncode != 0 and b"No such container" in missing.stderr
    assert net.allocations() == before + 2

    # removed: its address goes with it, and the network can go at once
    net.docker("rm", "-f", dbox, none)
    assert net.allocations() == before


def test_restart_policy_restart_is_plugged_again(net: DockerHost, networks: Networks) -> None:
    plug = networks()
    peer, box = uname("peer"), uname("box")
    sleeper(net, peer, plug)
    run(net, box, "--restart", "always")
    net.docker("network", "connect", plug, box)
    ip = address(net, box, plug)
    assert reaches(net, peer, box)
    pid = int(net.inspect(box)["State"]["Pid"])  # type: ignore[index]
    os.kill(pid, signal.SIGKILL)  # the daemon restarts it, not a client: the event plugs it
    wait_for(lambda: int(net.inspect(box)["State"]["Pid"]) not in (0, pid), 20, "no restart")  # type: ignore[index]
    started = time.monotonic()
    wait_for(lambda: reaches(net, peer, ip), 10, "not plugged again after a policy restart")
    print(f"re-plugged within {time.monotonic() - started:.2f} s of the restart being seen")
    assert address(net, box, plug) == ip
    assert reaches(net, box, peer)


@pytest.mark.parametrize("driver", DRIVERS)
def test_plugstrip_and_docker_networks_together(
    net: DockerHost, networks: Networks, driver: str
) -> None:
    plug, dnet = networks(driver), networks("bridge")
    ppeer, dpeer = uname("ppeer"), uname("dpeer")
    sleeper(net, ppeer, plug)
    run(net, dpeer, "--network", dnet)

    def reaches_both(box: str) -> None:
        assert set(shown_networks(net, box)) == {plug, dnet}
        assert reaches(net, box, ppeer) and reaches(net, box, dpeer)
        assert reaches(net, ppeer, box) and reaches(net, dpeer, box)

    # on plugstrip's network, then Docker's: the holder joins Docker's network
    first = uname("first")
    sleeper(net, first, plug)
    net.docker("network", "connect", dnet, first)
    reaches_both(first)
    members = json.loads(net.docker("network", "inspect", dnet).stdout)[0]["Containers"]
    assert {m["Name"] for m in members.values()} == {dpeer, first}  # the holder as its user
    assert net.inspect(first)["Id"] in members
    net.docker("network", "disconnect", dnet, first)
    assert set(shown_networks(net, first)) == {plug}
    assert not reaches(net, first, dpeer)

    # on Docker's network, then plugstrip's, before it starts (compose's order)
    second = uname("second")
    net.docker("create", "--name", second, "--network", dnet, "busybox", "sleep", "1d")
    net.docker("network", "connect", plug, second)
    net.docker("start", second)
    reaches_both(second)

    # both at create; a published port works through the holder on Docker's network
    third = uname("third")
    port = harness.free_port()
    run(
        net,
        third,
        "--network",
        plug,
        "--network",
        dnet,
        "-p",
        f"{port}:80",
        cmd=("httpd", "-f", "-p", "80"),
    )
    reaches_both(third)
    assert tcp_reaches(net, dpeer, third) and tcp_reaches(net, ppeer, third)
    fetch = net.run_in_ns(
        "sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 127.0.0.1 {port}"
    )
    assert fetch.stdout.startswith("HTTP/1."), fetch


def test_compose_service_on_a_docker_and_a_plugstrip_network(
    net: DockerHost, networks: Networks, tmp_path: Path
) -> None:
    plug = networks("plugstrip/ovs")
    project = uname("mix")
    services = {
        # each on both networks: compose creates it on the one of highest priority and
        # connects the other before it starts (api starts on plugstrip's, web on Docker's)
        "api": {
            "image": "busybox",
            "command": "httpd -f -p 80",
            "networks": {"front": {"priority": 10}, "back": {}},
        },
        "web": {
            "image": "busybox",
            "command": "sleep 1d",
            "networks": {"back": {"priority": 10}, "front": {}},
        },
        "db": {"image": "busybox", "command": "httpd -f -p 80", "networks": ["back"]},
        "cache": {"image": "busybox", "command": "httpd -f -p 80", "networks": ["front"]},
    }
    spec = {
        "version": "3.8",
        "services": services,
        "networks": {"front": {"external": True, "name": plug}, "back": {}},
    }
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "DOCKER_HOST": net.host, "COMPOSE_PROJECT_NAME": project}

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker-compose", "-f", str(tmp_path / "compose.yml"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )

    up = compose("up", "-d")
    assert up.returncode == 0, up.stderr
    try:
        back = f"{project}_back"
        for service in ("api", "web"):
            box = f"{project}_{service}_1"
            assert set(shown_networks(net, box)) == {plug, back}
        for service, peers in (("web", ("api", "db", "cache")), ("api", ("db", "cache"))):
            box = f"{project}_{service}_1"
            for peer in peers:  # by service name, on each network
                wait_for(
                    lambda b=box, p=peer: tcp_reaches(net, b, p),  # type: ignore[misc]
                    10,
                    f"{service} does not reach {peer}",
                )
        assert compose("ps").returncode == 0
    finally:
        down = compose("down")
    assert down.returncode == 0, down.stderr
    assert b"_back" not in net.docker("network", "ls").stdout
