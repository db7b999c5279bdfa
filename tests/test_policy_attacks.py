"""The policy attacked as a client on a shared socket would attack it, the daemon as oracle.

Each case is a raw request through plugstrip (policy: no privileges, no host namespaces,
binds only under one directory) that must be refused with the status and message shown,
and after which the daemon has created nothing. Where the case is a request the daemon
would act on, the same bytes are sent to the daemon directly too, and its inspect must
show the power: the attack is real, so the refusal is what stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from plugstrip.adapters.policy import learn
from plugstrip.adapters.policy.rules import Rules
from plugstrip.proxy.addresses import SocketAddress
from plugstrip.proxy.canonical import read_json
from plugstrip.proxy.contract import Refuse
from plugstrip.proxy.docker_api import DockerApi
from plugstrip.proxy.docker_types import body_schema, body_type
from tests import attack
from tests.attack import baseline
from tests.harness import docker

RUN = uuid.uuid4().hex[:6]
VOLUME = f"etcvol-{RUN}"  # a local volume that binds /etc, made on the daemon directly
HOSTPID = f"hostpid-{RUN}"  # a container with the host's PID namespace
ETCBIND = f"etcbind-{RUN}"  # a container with /etc bound in
TARGET = f"target-{RUN}"  # a running container to exec into
# A running container an operator made with /etc bound in (this machine runs no privileged
# containers: its own capabilities are bounded).
POWERFUL = f"powerful-{RUN}"


@dataclass(frozen=True)
class Case:
    name: str
    body: str | None  # raw JSON text, written as an attacker would
    why: str  # in the refusal's message
    status: int = 403
    target: str = "/v1.41/containers/create"
    method: str = "POST"
    headers: dict[str, str] | None = None
    chunked: bool = False
    real: bool = True  # the daemon, asked directly, grants the power

    @property
    def id(self) -> str:
        return self.name.replace(" ", "-")


CREATE_CASES = [
    Case(
        "lower-case keys",
        '{"image":"busybox","hostconfig":{"privileged":true}}',
        "privileged containers",
    ),
    Case("pidmode", '{"Image":"busybox","HostConfig":{"pidmode":"host"}}', "PidMode=host"),
    Case(
        "binds lower",
        '{"Image":"busybox","hostConfig":{"binds":["/etc:/x"]}}',
        "bind mount of /etc",
    ),
    Case(
        "mounts lower",
        '{"Image":"busybox","HostConfig":{"mounts":[{"type":"bind",'
        '"source":"/etc","target":"/x"}]}}',
        "bind mount of /etc",
    ),
    Case(
        "two HostConfig",
        '{"Image":"busybox","HostConfig":{"Privileged":true},"HostConfig":{"Memory":0}}',
        "gives key 'HostConfig' twice",
        400,
    ),
    Case(
        "HostConfig and hostConfig",
        '{"Image":"busybox","HostConfig":{"Privileged":true},"hostConfig":{"Memory":0}}',
        "also as 'HostConfig'",
        400,
    ),
    Case(
        "duplicate inside a mount",
        '{"Image":"busybox","HostConfig":{"Mounts":[{"Type":'
        '"volume","type":"bind","Source":"/etc","Target":"/x"}]}}',
        "twice",
        400,
        real=False,
    ),
    Case("top-level Privileged", '{"Image":"busybox","Privileged":true}', "privileged containers"),
    Case("top-level Binds", '{"Image":"busybox","Binds":["/etc:/x"]}', "bind mount of /etc"),
    Case(
        "long s",
        '{"Image":"busybox","HostConfig":{"Bind\\u017f":["/etc:/x"]}}',
        "bind mount of /etc",
    ),
    Case(
        "kelvin sign",
        '{"Image":"busybox","HostConfig":{"Networ\\u212aMode":"host"}}',
        "NetworkMode=host",
    ),
    Case(
        "escaped key",
        '{"Image":"busybox","Host\\u0043onfig":{"Privileged":true}}',
        "privileged containers",
    ),
    Case("CapAdd ALL string", '{"Image":"busybox","HostConfig":{"CapAdd":"ALL"}}', "CapAdd ALL"),
    Case(
        "CapAdd sys_admin",
        '{"Image":"busybox","HostConfig":{"capadd":["sys_admin"]}}',
        "CapAdd sys_admin",
    ),
    Case(
        "Devices",
        '{"Image":"busybox","HostConfig":{"Devices":[{"PathOnHost":"/dev/null",'
        '"PathInContainer":"/dev/x","CgroupPermissions":"rwm"}]}}',
        "Devices",
    ),
    Case(
        "DeviceCgroupRules",
        '{"Image":"busybox","HostConfig":{"DeviceCgroupRules":["b *:* rwm"]}}',
        "DeviceCgroupRules",
    ),
    Case(
        "seccomp unconfined",
        '{"Image":"busybox","HostConfig":{"SecurityOpt":["seccomp=unconfined"]}}',
        "SecurityOpt seccomp=unconfined",
    ),
    Case(
        "apparmor colon",
        '{"Image":"busybox","HostConfig":{"SecurityOpt":["apparmor:unconfined"]}}',
        "SecurityOpt apparmor:unconfined",
    ),
    Case(
        "systempaths",
        '{"Image":"busybox","HostConfig":{"SecurityOpt":["systempaths=unconfined"]}}',
        "SecurityOpt systempaths=unconfined",
        real=False,  # 20.10 does not know it yet: refused by the daemon too
    ),
    Case(
        "cgroupns host",
        '{"Image":"busybox","HostConfig":{"CgroupnsMode":"host"}}',
        "CgroupnsMode=host",
        real=False,  # on cgroup v1 (here) the daemon's default is host already
    ),
    Case("ipc host", '{"Image":"busybox","HostConfig":{"IpcMode":"host"}}', "IpcMode=host"),
    Case("uts host", '{"Image":"busybox","HostConfig":{"UTSMode":"host"}}', "UTSMode=host"),
    Case(
        "pid join of a host-pid container",
        f'{{"Image":"busybox","HostConfig":{{"PidMode":"container:{HOSTPID}"}}}}',
        "joins a container with host powers",
    ),
    Case(
        "VolumesFrom a container with /etc",
        f'{{"Image":"busybox","HostConfig":{{"VolumesFrom":["{ETCBIND}"]}}}}',
        f"VolumesFrom {ETCBIND}: bind of /etc",
    ),
    Case(
        "named volume binding /etc",
        f'{{"Image":"busybox","HostConfig":{{"Binds":["{VOLUME}:/x"]}}}}',
        f"local volume {VOLUME} binding of /etc",
    ),
    Case(
        "volume mount of it",
        '{"Image":"busybox","HostConfig":{"Mounts":[{"Type":"volume",'
        f'"Source":"{VOLUME}","Target":"/x"}}]}}}}',
        f"local volume {VOLUME} binding of /etc",
    ),
    Case(
        "volume mount with bind driver options",
        '{"Image":"busybox","HostConfig":{"Mounts":'
        '[{"Type":"volume","Source":"fresh-' + RUN + '","Target":"/x","VolumeOptions":'
        '{"DriverConfig":{"Name":"local","Options":{"type":"none","o":"bind",'
        '"device":"/etc"}}}}]}}',
        "binding of /etc",
    ),
    Case(
        "dot-dot out of the allowed root",
        '{"Image":"busybox","HostConfig":{"Binds":["ALLOWED/../../../../../../../etc:/x"]}}',
        "bind mount of /etc",
    ),
    Case(
        "symlink out of the allowed root",
        '{"Image":"busybox","HostConfig":{"Binds":["ALLOWED/link:/x"]}}',
        "bind mount of /etc",
    ),
    Case(
        "version with a third part",  # the daemon's router reads /v1.41.0/ as 1.41
        '{"Image":"busybox","HostConfig":{"Privileged":true}}',
        "privileged containers",
        target="/v1.41.0/containers/create",
    ),
    Case(
        "percent-escaped route",
        '{"Image":"busybox","HostConfig":{"Privileged":true}}',
        "privileged containers",
        target="/v1.41/containers/%63reate",
    ),
    Case(
        "mixed-case content type",
        '{"Image":"busybox","HostConfig":{"Privileged":true}}',
        "privileged containers",
        headers={"Content-Type": "Application/JSON"},
    ),
    Case(
        "content type with parameters",
        '{"Image":"busybox","HostConfig":{"Privileged":true}}',
        "privileged containers",
        headers={"Content-Type": "application/json; charset=utf-8"},
    ),
    Case(
        "no content type",
        '{"Image":"busybox","HostConfig":{"Privileged":true}}',
        "privileged containers",
        headers={"Content-Type": ""},
        real=False,  # the daemon wants the header with a body
    ),
    Case(
        "chunked body",
        '{"Image":"busybox","HostConfig":{"Privileged":true}}',
        "privileged containers",
        chunked=True,
    ),
    Case(
        "text/plain body",
        '{"Image":"busybox","HostConfig":{"Privileged":true}}',
        "body must be JSON",
        400,
        headers={"Content-Type": "text/plain"},
        real=False,
    ),
    Case(
        "two JSON values",
        '{"Image":"busybox"} {"HostConfig":{"Privileged":true}}',
        "not one JSON value",
        400,
        real=False,
    ),
]
PRIVILEGED = '{"Image":"busybox","HostConfig":{"Privileged":true}}'
# The daemon routes an encoded '/' as a '/' (the oracle below shows it); the other forms it
# redirects or refuses, so only plugstrip's answer is checked for them.
# Powers the first corpus had no rule for, and fields the Engine API does not define
CREATE_CASES += [
    *(
        Case(
            f"cgroup parent {parent}",
            '{"Image":"busybox","CgroupParent":"' + parent + '"}',
            "CgroupParent",
        )
        for parent in ("/", "/system.slice", "../..")
    ),
    Case(
        "negative OOM score",
        '{"Image":"busybox","HostConfig":{"OomScoreAdj":-1000}}',
        "a negative OOM score",
    ),
    Case(
        "no OOM killer",
        '{"Image":"busybox","HostConfig":{"OomKillDisable":true}}',
        "disabling the OOM killer",
    ),
    Case(
        "ulimits",
        '{"Image":"busybox","HostConfig":{"Ulimits":[{"Name":"nofile",'
        '"Soft":1048576,"Hard":1048576}]}}',
        "setting ulimits",
    ),
    Case(
        "a host sysctl",
        '{"Image":"busybox","HostConfig":{"Sysctls":{"kernel.core_pattern":"|/tmp/x"}}}',
        "the sysctl kernel.core_pattern is the host's",
    ),
    Case(
        "a host sysctl with slashes",
        '{"Image":"busybox","HostConfig":{"Sysctls":{"kernel/core_pattern":"|/tmp/x"}}}',
        "is the host's",
        real=False,
    ),
    Case(
        "net sysctl on the host's network",
        '{"Image":"busybox","HostConfig":{'
        '"NetworkMode":"host","Sysctls":{"net.ipv4.ip_forward":"1"}}}',
        "NetworkMode=host",
    ),
    Case(
        "a log driver that writes on the host",
        '{"Image":"busybox","HostConfig":{"LogConfig":{"Type":"syslog","Config":{}}}}',
        "the log driver syslog",
    ),
    Case(
        "a field API 1.41 does not have",
        '{"Image":"busybox","HostConfig":{"Capabilities":["CAP_SYS_ADMIN"]}}',
        "HostConfig.Capabilities is not a field",
        real=False,
    ),  # 20.10 ignores it; a newer daemon would not
    Case(
        "a runtime",
        '{"Image":"busybox","HostConfig":{"Runtime":"other"}}',
        "the runtime other",
        real=False,
    ),  # no such runtime here: the daemon refuses it
    Case(
        "macvlan on a host interface",
        '{"Name":"bad-net","Driver":"macvlan","Options":{"parent":"lo"}}',
        "the network driver macvlan",
        target="/v1.41/networks/create",
        real=False,
    ),
    Case(
        "a bridge on the host's own",
        '{"Name":"bad-net","Options":{"com.docker.network.bridge.name":"docker0"}}',
        "com.docker.network.bridge.name",
        target="/v1.41/networks/create",
        real=False,
    ),
]

PATH_CASES = [
    Case("encoded slash", PRIVILEGED, "encoded '/'", 400, target="/v1.41/containers%2Fcreate"),
    *(
        Case(name, "{}", why, 400, target=target, real=False)
        for name, why, target in (
            ("doubled slash", "doubled '/'", "/v1.41//containers/create"),
            ("dot segment", "dot segment", "/v1.41/./containers/create"),
            ("dot-dot segment", "dot segment", "/v1.41/containers/x/../create"),
            ("escaped dot-dot", "dot segment", "/v1.41/containers/x/%2e%2e/create"),
            ("bad escape", "invalid percent-escape", "/v1.41/containers/%zzeate"),
            ("absolute form", "is not a path", "http://docker/v1.41/containers/create"),
        )
    ),
]
OTHER_CASES = [
    Case(
        "volume create binding /etc",
        '{"Name":"bad-' + RUN + '","DriverOpts":{"type":"none","o":"bind","device":"/etc"}}',
        "a local volume binding of /etc",
        target="/v1.41/volumes/create",
    ),
    Case(
        "volume create lower-case",
        '{"name":"bad-' + RUN + '","driveropts":{"type":"none","o":"bind","device":"/etc"}}',
        "a local volume binding of /etc",
        target="/v1.41/volumes/create",
    ),
    Case(
        "volume of a block device",
        '{"Name":"bad-' + RUN + '","DriverOpts":{"type":"ext4","device":"/dev/sda1"}}',
        "mounting device /dev/sda1",
        target="/v1.41/volumes/create",
    ),
    Case(
        "exec privileged",
        '{"Cmd":["true"],"privileged":true}',
        "privileged execs",
        target=f"/v1.41/containers/{TARGET}/exec",
    ),
    *(
        Case(
            f"exec as {user}",
            '{"Cmd":["true"],"User":"' + user + '"}',
            "exec as",
            target=f"/v1.41/containers/{TARGET}/exec",
        )
        for user in ("0", "00", "root", "0:0", "root:root")
    ),
    *(
        Case(
            f"exec as {user!r}, uid 0 as runc reads it",
            '{"Cmd":["true"],"User":"' + user + '"}',
            "uid 0 in the container",
            target=f"/v1.41/containers/{TARGET}/exec",
        )
        # a sign or zeros (Go's Atoi), an empty user before a group (the default: root)
        for user in ("+0", "-0", "+000", ":0", ":1000", "0:1000", "-0:-0")
    ),
    Case(
        "exec as a name that is uid 0",  # toor:x:0:0 in the container's /etc/passwd
        '{"Cmd":["true"],"User":"toor"}',
        "exec as toor, uid 0 in the container",
        target=f"/v1.41/containers/{TARGET}/exec",
    ),
    Case(
        "exec into a container with /etc bound",
        '{"Cmd":["true"]}',
        f"container {POWERFUL} has a power this client may not use (bind mount of /etc",
        target=f"/v1.41/containers/{POWERFUL}/exec",
    ),
    Case(
        "attach to a container with /etc bound",
        None,
        f"container {POWERFUL} has a power",
        target=f"/v1.41/containers/{POWERFUL}/attach?stream=1&stdin=1",
        headers={"Content-Type": ""},
        real=False,  # a hijack: the oracle would hold a shell open
    ),
    Case(
        "copy into a container with /etc bound",
        "not a tar: refused before it is read",
        f"container {ETCBIND} has a power this client may not use (bind mount of /etc",
        method="PUT",
        target=f"/v1.41/containers/{ETCBIND}/archive?path=/x",
        headers={"Content-Type": "application/x-tar"},
        real=False,  # it would write into the host's /etc
    ),
    Case(
        "service with a bind",
        '{"Name":"s","TaskTemplate":{"ContainerSpec":{"Image":'
        '"busybox","Mounts":[{"Type":"bind","Source":"/etc","Target":"/x"}]}}}',
        "creating or updating services",
        target="/v1.41/services/create",
        real=False,
    ),
    Case(
        "swarm init",
        '{"ListenAddr":"127.0.0.1:2377"}',
        "managing the swarm",
        target="/v1.41/swarm/init",
        real=False,
    ),
    Case(
        "plugin pull",
        '[{"Name":"network","Value":["host"]}]',
        "installing or changing",
        target="/v1.41/plugins/pull?remote=x",
        real=False,
    ),
    Case(
        "build on the host network",
        None,
        "networkmode=host",
        target="/v1.41/build?networkmode=host",
        headers={"Content-Type": "application/x-tar"},
        real=False,
    ),
]
ALL = CREATE_CASES + PATH_CASES + OTHER_CASES


@pytest.fixture(scope="module")
def setup(dockerd: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """plugstrip with the policy in front of the test daemon, and the objects the attacks
    name, made on the daemon directly."""
    from tests import harness

    work = tmp_path_factory.mktemp("policy")
    allowed = work / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to("/etc")
    config = f"""
endpoints:
  "* /**": {{pre: [policy], post: [policy]}}
adapters:
  policy: {{use: policy, options: {{bind_mounts: ["{allowed}"], unknown_fields: refuse}}}}
"""
    ps = harness.start_plugstrip(dockerd, work / "ps", config)
    try:  # made inside: a failure here still stops plugstrip and removes them
        docker(
            dockerd,
            "volume",
            "create",
            "-o",
            "type=none",
            "-o",
            "o=bind",
            "-o",
            "device=/etc",
            VOLUME,
        )
        docker(dockerd, "create", "--name", HOSTPID, "--pid", "host", "busybox", "true")
        docker(dockerd, "create", "--name", ETCBIND, "-v", "/etc:/x", "busybox", "true")
        docker(
            dockerd,
            "run",
            "-d",
            "--name",
            TARGET,
            "-e",
            "SECRET=hunter2",
            "--network",
            "none",
            "busybox",
            "sleep",
            "600",
        )
        docker(dockerd, "exec", TARGET, "sh", "-c", "echo toor:x:0:0::/root:/bin/sh >> /etc/passwd")
        docker(
            dockerd,
            "run",
            "-d",
            "--name",
            POWERFUL,
            "-v",
            "/etc:/x:ro",
            "--network",
            "none",
            "busybox",
            "sleep",
            "600",
        )
        yield ps.socket, str(allowed)
    finally:
        ps.stop()
        docker(dockerd, "rm", "-f", HOSTPID, ETCBIND, TARGET, POWERFUL, check=False)
        docker(dockerd, "volume", "rm", "-f", VOLUME, check=False)


def _daemon_sock(dockerd: str) -> str:
    return dockerd.removeprefix("unix://")


def _volumes(sock: str) -> dict[str, Any]:
    answer = attack.get(sock, "/v1.41/volumes") or {}
    return {v["Name"]: v for v in answer.get("Volumes") or []}


def _names(sock: str) -> set[str]:
    return {
        n.lstrip("/")
        for c in attack.get(sock, "/v1.41/containers/json?all=1") or []
        for n in c["Names"]
    }


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_refused_and_nothing_made(case: Case, setup: tuple[str, str], dockerd: str) -> None:
    sock, allowed = setup
    daemon = _daemon_sock(dockerd)
    body = case.body.replace("ALLOWED", allowed) if case.body else case.body
    name = f"atk-{RUN}-{abs(hash(case.name)) % 10**6}"
    creates = "containers" in case.target and case.target.endswith("reate")
    target = case.target + (f"?name={name}" if creates else "")
    before_names, before_volumes = _names(daemon), set(_volumes(daemon))
    status, answer = attack.send(sock, case.method, target, body, case.headers, case.chunked)
    assert status == case.status, answer
    assert isinstance(answer, dict) and case.why in answer["message"], answer
    assert _names(daemon) == before_names  # nothing created, nothing removed
    assert set(_volumes(daemon)) == before_volumes
    if not case.real or not case.target.startswith("/v1.41"):
        return
    # The oracle: the same bytes straight to the daemon grant the power.
    status, answer = attack.send(daemon, case.method, target, body, case.headers, case.chunked)
    try:
        assert status in (200, 201), answer
        if creates:
            info = attack.get(daemon, f"/v1.41/containers/{name}/json")
            assert attack.powers(info, allowed, _volumes(daemon), baseline(dockerd)), info[
                "HostConfig"
            ]
    finally:
        docker(dockerd, "rm", "-f", name, check=False)
        docker(dockerd, "volume", "rm", "-f", f"bad-{RUN}", f"fresh-{RUN}", check=False)


ROOT_USERS = ("0", "+0", "-0", "000", ":0", ":1000", "0:1000", "root", "toor")
OTHER_USERS = ("1000", "+1000", "01000", "1000:0")


def test_users_read_as_runc_reads_them(setup: tuple[str, str], dockerd: str) -> None:
    """The daemon is the oracle: each user the policy refuses runs as uid 0 when asked of
    the daemon directly, and each it lets through runs as someone else."""
    sock, _ = setup
    for user in ROOT_USERS:
        direct = docker(dockerd, "exec", "-u", user, TARGET, "id", "-u").stdout.strip()
        assert direct == b"0", (user, direct)
        out = docker(f"unix://{sock}", "exec", "-u", user, TARGET, "id", "-u", check=False)
        assert out.returncode != 0 and b"uid 0 in the container" in out.stderr, (user, out)
    for user in OTHER_USERS:
        out = docker(f"unix://{sock}", "exec", "-u", user, TARGET, "id", "-u")
        assert out.stdout.strip() not in (b"", b"0"), (user, out.stdout)


def test_what_no_rule_is_about_passes_as_sent(setup: tuple[str, str], dockerd: str) -> None:
    """Labels differing only in case are data, not fields: kept, and the bytes unchanged."""
    sock, allowed = setup
    name = f"ok-{RUN}"
    body = (
        '{"Image":"busybox","Labels":{"a":"1","A":"2"},"hostconfig":{"binds":["'
        + allowed
        + '/sub:/x"]}}'
    )
    status, answer = attack.send(sock, "POST", f"/v1.41/containers/create?name={name}", body)
    try:
        assert status == 201, answer
        info = attack.get(_daemon_sock(dockerd), f"/v1.41/containers/{name}/json")
        assert info["Config"]["Labels"] == {"a": "1", "A": "2"}
        assert info["HostConfig"]["Binds"] == [f"{allowed}/sub:/x"]
    finally:
        docker(dockerd, "rm", "-f", name, check=False)


def test_the_cli_prints_refusals(setup: tuple[str, str], dockerd: str) -> None:
    sock, _ = setup
    out = docker(
        f"unix://{sock}", "run", "--rm", "--cap-add", "ALL", "busybox", "true", check=False
    )
    assert out.returncode != 0
    assert b"Error response from daemon: plugstrip policy: CapAdd ALL is not allowed" in (
        out.stderr
    ), out.stderr
    ok = docker(
        f"unix://{sock}",
        "run",
        "--rm",
        "--network",
        "none",
        "--cap-add",
        "CHOWN",
        "busybox",
        "true",
        check=False,
    )
    assert ok.returncode == 0, ok.stderr  # a default capability grants nothing new


def test_smuggled_bodies_reach_nothing(setup: tuple[str, str], dockerd: str) -> None:
    """Framing tricks (the shape of CVE-2024-41110: a body the check never saw): whatever
    plugstrip answers, the daemon creates nothing privileged."""
    sock, _ = setup
    daemon = _daemon_sock(dockerd)
    body = PRIVILEGED.encode()
    head = (
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
    )
    tricks = {
        "length 0, body after": head + b"Content-Length: 0\r\n\r\n" + body,
        "chunked and a length": head
        + f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n",
        "two lengths": head
        + f"Content-Length: {len(body)}\r\nContent-Length: 0\r\n\r\n".encode()
        + body,
        "lower-case method": head.replace(b"POST", b"post")
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body,
    }
    before = _names(daemon)
    for name, raw in tricks.items():
        status, answer = attack.exchange(sock, raw)
        if name == "length 0, body after":
            # Read as the daemon reads it (the daemon is the parser): an empty create, and
            # the bytes after it a next request that is no HTTP.
            direct, direct_answer = attack.exchange(daemon, raw)
            assert (status, answer) == (direct, direct_answer), name
        else:
            assert status in (400, 403), (name, status, answer)
        containers = attack.get(daemon, "/v1.41/containers/json?all=1") or []
        for c in containers:
            info = attack.get(daemon, f"/v1.41/containers/{c['Id']}/json")
            assert not info["HostConfig"]["Privileged"], name
    assert _names(daemon) == before


def test_read_side_scopes(dockerd: str, tmp_path: Path, setup: tuple[str, str]) -> None:
    from tests import harness

    config = """
endpoints:
  "* /**": {pre: [policy], post: [policy]}
adapters:
  policy:
    use: policy
    options: {archive: false, export: false, logs: false, attach: false, env: false,
              deny: ["HEAD /_ping"]}
"""
    ps = harness.start_plugstrip(dockerd, tmp_path / "scopes", config)
    try:
        for args, why in (
            (("cp", f"{TARGET}:/etc/passwd", "-"), b"copying files out of containers"),
            (("export", TARGET), b"exporting containers"),
            (("logs", TARGET), b"reading container logs"),
        ):
            out = docker(ps.host, *args, check=False, timeout=30)
            assert out.returncode != 0 and b"plugstrip policy: " + why in out.stderr, out.stderr
        # On a hijack the CLI prints the status only ("unable to upgrade to tcp, received
        # 403"), as it would for the daemon's own refusal; the message is in the body.
        out = docker(ps.host, "attach", "--no-stdin", TARGET, check=False, timeout=30)
        assert out.returncode != 0 and b"received 403" in out.stderr, out.stderr
        status, answer = attack.send(
            ps.socket, "POST", f"/v1.41/containers/{TARGET}/attach?stream=1"
        )
        assert status == 403 and "attaching to containers" in answer["message"]
        shown = docker(ps.host, "inspect", "-f", "{{json .Config.Env}}", TARGET).stdout
        assert b'"SECRET=<redacted by plugstrip>"' in shown and b"hunter2" not in shown
        real = docker(dockerd, "inspect", "-f", "{{json .Config.Env}}", TARGET).stdout
        assert b'"SECRET=hunter2"' in real
        docker(ps.host, "cp", str(Path(__file__)), f"{TARGET}:/tmp/")  # cp in is no read
        # A refused HEAD is a head alone: nothing follows it on the connection (Go's client
        # reports stray bytes as an "unsolicited response"; http.client would hide them).
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(ps.socket)
            raw.sendall(b"HEAD /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got:
                got += raw.recv(4096)
            raw.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                got += raw.recv(4096)
        assert got.startswith(b"HTTP/1.1 403") and got.endswith(b"\r\n\r\n"), got
    finally:
        ps.stop()


LEARNED = [c for c in ALL if c.status == 403]


@pytest.mark.parametrize("case", LEARNED, ids=[c.id for c in LEARNED])
def test_learning_grants_what_a_call_needs_and_nothing_more(
    case: Case, setup: tuple[str, str], dockerd: str
) -> None:
    """Learn mode on each attack: the strictest rule set refuses it, the grants learned
    from the refusals allow it, and each grant is needed (without any one, refused)."""
    _, allowed = setup
    target, _, query = case.target.partition("?")
    path = unquote(target)  # as the core hands it to hooks
    text = case.body.replace("ALLOWED", allowed) if case.body else None
    json_body = text is not None and body_type(case.method, path) is not None
    body = read_json(text.encode(), body_schema(case.method, path)) if json_body else None

    async def learn_and_check() -> None:
        daemon = DockerApi(SocketAddress.parse(dockerd))
        try:
            grants, why = await learn.grants_for(case.method, path, query, body, daemon)
            assert why is None and any(option != "allow" for option, _ in grants), (grants, why)
            for left_out in [None, *grants]:
                rules = Rules.from_options(learn.STRICTEST)
                for grant in grants:
                    rules = rules if grant == left_out else rules.widened(grant)
                hits = rules.hits(case.method, path, query, body)
                try:
                    rules.check_route(case.method, path, query)
                    await rules.check_asked(case.method, path, hits, body, daemon)
                    passed = True
                except Refuse:
                    passed = False
                assert passed is (left_out is None), (grants, left_out)
        finally:
            await daemon.close()

    asyncio.run(learn_and_check())
