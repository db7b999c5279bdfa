"""What a user checks of containers on a test host: addresses, reach by ICMP and TCP."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

from tests.dockerhost import DockerHost

DRIVERS = ["plugstrip/weave", "plugstrip/ovs"]  # each network test runs on both
Networks = Callable[..., str]  # the conftest ``networks`` fixture: makes one, returns its name


def uname(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def sleeper(net: DockerHost, name: str, network: str, *options: str) -> None:
    """`docker run -d` of a busybox that sleeps, named ``name``, on ``network``."""
    net.docker(
        "run", "-d", "--name", name, "--network", network, *options, "busybox", "sleep", "1d"
    )


def address(net: DockerHost, container: str, network: str) -> str:
    settings: Any = net.inspect(container)["NetworkSettings"]
    return str(settings["Networks"][network]["IPAddress"])


def in_container(net: DockerHost, container: str, *cmd: str) -> subprocess.CompletedProcess[bytes]:
    return net.docker("exec", container, *cmd, check=False)


def reaches(net: DockerHost, src: str, dst: str) -> bool:
    """ICMP from container ``src`` to ``dst`` (a name or an address)."""
    return in_container(net, src, "ping", "-c", "1", "-W", "1", dst).returncode == 0


def ping6(net: DockerHost, src: str, dst: str) -> bool:
    """ICMPv6 from container ``src`` to ``dst`` (a name or an address)."""
    return in_container(net, src, "ping6", "-c", "1", "-W", "2", dst).returncode == 0


def address6(net: DockerHost, container: str, network: str) -> str:
    """The container's IPv6 address on ``network``, as `docker inspect` shows it."""
    networks: Any = net.inspect(container)["NetworkSettings"]["Networks"]  # type: ignore[index]
    return str(networks[network]["GlobalIPv6Address"])


def tcp_reaches(net: DockerHost, src: str, dst: str, port: int = 80) -> bool:
    """A TCP exchange from ``src`` to an httpd at ``dst``: an HTTP status line comes back."""
    out = in_container(
        net, src, "sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {dst} {port}"
    )
    return out.stdout.startswith(b"HTTP/1.")


def ip_addrs(net: DockerHost, container: str) -> str:
    return in_container(net, container, "ip", "-4", "-o", "addr", "show").stdout.decode()


def refused_in_dockers_format(net: DockerHost, cases: list[tuple[list[str], str]]) -> None:
    """Each docker CLI command of ``cases`` fails with the daemon's error, whose message
    holds the text given with it."""
    for args, message in cases:
        out = net.docker(*args, check=False)
        assert out.returncode != 0, args
        assert b"Error response from daemon: " in out.stderr, out.stderr
        assert message.encode() in out.stderr, (args, out.stderr)


def plugstrip_cmd(
    net: DockerHost, *args: str, ovs: bool = True
) -> subprocess.CompletedProcess[str]:
    """A `plugstrip` operator command run on the test host, against its state (and OVS,
    for the commands that look at it)."""
    return subprocess.run(
        [
            "nsenter",
            f"--net={net.netns_path}",
            "plugstrip",
            *args,
            "--state-dir",
            str(net.workdir / "plugstrip" / "state"),
            *(("--ovsdb", net.ovsdb) if ovs else ()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


_UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9000))
s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
try:
    print(s.recv(100).decode(), flush=True)
except TimeoutError:
    pass
"""
_UDP_CLIENT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(sys.argv[1].encode(), (sys.argv[2], 9000))
    time.sleep(0.05)
"""


def udp_reaches(net: DockerHost, src: str, dst: str, dst_host: DockerHost | None = None) -> bool:
    """A UDP datagram from container ``src`` reaches container ``dst`` (on ``dst_host``,
    if not on ``net``) on port 9000 of its address: the image's busybox has no UDP nc, so
    both ends are Python, each in its container's network namespace."""
    there = dst_host or net
    pids = [int(h.inspect(c)["State"]["Pid"]) for h, c in ((net, src), (there, dst))]  # type: ignore[call-overload]
    networks: Any = there.inspect(dst)["NetworkSettings"]["Networks"]  # type: ignore[index]
    target = str(next(iter(networks.values()))["IPAddress"])
    word = uuid.uuid4().hex
    server = subprocess.Popen(
        ["nsenter", "-t", str(pids[1]), "-n", sys.executable, "-c", _UDP_SERVER, "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    subprocess.run(
        ["nsenter", "-t", str(pids[0]), "-n", sys.executable, "-c", _UDP_CLIENT, word, target],
        check=True,
        timeout=10,
    )
    out, _ = server.communicate(timeout=10)
    return word in out
