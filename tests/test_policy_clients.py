"""Clients told apart: two uids on one unix socket, two certificates on a TLS listener.

Each client runs the unchanged docker CLI as itself (its own uid, or its own certificate);
its rule set applies, and with ownership it sees and touches only what it made, the rest
answering as if absent. What really happened is read on the daemon directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.harness import Plugstrip, docker, free_port, start_plugstrip, wait_for

RUN = uuid.uuid4().hex[:6]
OWNER = "io.plugstrip.owner"
CLIENTS = """
endpoints:
  "* /**": {pre: [policy], post: [policy, audit]}
adapters:
  audit: {use: audit, options: {path: AUDIT}}
  policy:
    use: policy
    options:
      ownership: true
      clients:
        - match: {uid: 0}
          rules: {}
        - match: {uid: [1001, 1002]}
          rules: {bind_mounts: []}
        - match: {uid: 1003}
          rules: {read_only: true}
        - match: {cert_cn: alice}
          rules: {bind_mounts: []}
        - match: {cert_san: bob@example}
          rules: {read_only: true}
        - match: {}
          rules: {deny: ["* /**"]}
"""

Docker = Callable[..., subprocess.CompletedProcess[bytes]]


@pytest.fixture(scope="module")
def shared(dockerd: str) -> Iterator[tuple[Plugstrip, Path]]:
    """plugstrip with per-client rules, on a socket every test uid may open."""
    root = Path(tempfile.mkdtemp(prefix="ps-clients-"))
    root.chmod(0o755)
    sock = root / "shared.sock"
    config = CLIENTS.replace("AUDIT", str(root / "audit.jsonl"))
    ps = start_plugstrip(dockerd, root / "ps", config, ["--listen", f"unix://{sock}"])
    try:
        wait_for(sock.exists, 20, "no shared socket")
        sock.chmod(0o666)
        yield ps, root
    finally:
        ps.stop()
        docker(dockerd, "rm", "-f", *(f"{w}-{RUN}" for w in ("a", "a2", "b", "alice")), check=False)
        docker(dockerd, "volume", "rm", "-f", f"vol-a-{RUN}", check=False)
        shutil.rmtree(root, ignore_errors=True)


def as_uid(root: Path, uid: int) -> Docker:
    """The docker CLI run by ``uid`` against the shared socket."""
    home = root / f"home-{uid}"
    home.mkdir(exist_ok=True)
    os.chown(home, uid, uid)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        env = {"PATH": os.environ["PATH"], "HOME": str(home)}
        env["DOCKER_HOST"] = f"unix://{root}/shared.sock"
        proc = subprocess.run(
            ["docker", *args], capture_output=True, env=env, user=uid, group=uid, timeout=60
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"uid {uid}: docker {' '.join(args)}: {proc.stderr!r}")
        return proc

    return run


def labels(dockerd: str, *what: str) -> dict[str, str]:
    out = docker(
        dockerd,
        *what,
        "--format",
        "{{json .Labels}}" if what[0] == "volume" else "{{json .Config.Labels}}",
    ).stdout
    return json.loads(out) or {}


def names(run: Docker) -> set[str]:
    return set(run("ps", "-a", "--format", "{{.Names}}").stdout.decode().split())


def test_two_uids_one_socket(shared: tuple[Plugstrip, Path], dockerd: str) -> None:
    _, root = shared
    a, b, reader = as_uid(root, 1001), as_uid(root, 1002), as_uid(root, 1003)
    a("create", "--name", f"a-{RUN}", "--network", "none", "busybox", "sleep", "300")
    a("create", "--name", f"a2-{RUN}", "--network", "none", "busybox", "true")
    a("volume", "create", f"vol-a-{RUN}")
    # b tries to pass as a: the label is plugstrip's to write
    b(
        "create",
        "--name",
        f"b-{RUN}",
        "--label",
        f"{OWNER}=uid:1001",
        "--network",
        "none",
        "busybox",
        "true",
    )
    assert labels(dockerd, "container", "inspect", f"a-{RUN}")[OWNER] == "uid:1001"
    assert labels(dockerd, "volume", "inspect", f"vol-a-{RUN}")[OWNER] == "uid:1001"
    assert labels(dockerd, "container", "inspect", f"b-{RUN}")[OWNER] == "uid:1002"

    assert {f"a-{RUN}", f"a2-{RUN}"} <= names(a) and f"b-{RUN}" not in names(a)
    assert f"b-{RUN}" in names(b) and not {f"a-{RUN}", f"a2-{RUN}"} & names(b)
    assert f"vol-a-{RUN}" not in b("volume", "ls", "-q").stdout.decode().split()
    assert f"vol-a-{RUN}" in a("volume", "ls", "-q").stdout.decode().split()

    # What b does not own is absent to b: the CLI says and exits as for a name that is not
    # there at all, and the daemon still has it.
    for args in (
        ("container", "inspect", "a-RUN"),
        ("rm", "-f", "a-RUN"),
        ("volume", "rm", "vol-a-RUN"),
        ("volume", "inspect", "vol-a-RUN"),
        ("run", "--rm", "--volumes-from", "a-RUN", "busybox", "true"),
    ):
        out = b(*(arg.replace("RUN", RUN) for arg in args), check=False)
        absent = b(*(arg.replace("RUN", f"gone-{RUN}") for arg in args), check=False)
        assert out.returncode == absent.returncode, (args, out.stderr)
        assert out.stderr == absent.stderr.replace(f"gone-{RUN}".encode(), RUN.encode()), (
            out.stderr,
            absent.stderr,
        )
        assert b"No such" in out.stderr or b"no such" in out.stderr, (args, out.stderr)
    assert docker(dockerd, "container", "inspect", f"a-{RUN}", check=False).returncode == 0
    assert docker(dockerd, "volume", "inspect", f"vol-a-{RUN}", check=False).returncode == 0
    a("start", f"a-{RUN}")
    out = b("exec", f"a-{RUN}", "true", check=False)
    assert out.returncode != 0 and f"No such container: a-{RUN}".encode() in out.stderr
    a("exec", f"a-{RUN}", "true")
    b("container", "prune", "-f")  # prunes b's own only
    assert docker(dockerd, "container", "inspect", f"a2-{RUN}", check=False).returncode == 0
    assert docker(dockerd, "container", "inspect", f"b-{RUN}", check=False).returncode != 0

    out = reader("create", "busybox", check=False)
    assert b"plugstrip policy: the Docker API is read-only here" in out.stderr, out.stderr
    assert names(reader) == set()  # read-only, and owns nothing
    root_sees = names(as_uid(root, 0))
    assert {f"a-{RUN}", f"a2-{RUN}"} <= root_sees  # rules: {} is everything, all seen

    audit = [json.loads(line) for line in (root / "audit.jsonl").read_text().splitlines()]
    assert any("uid=1001" in line["who"] and line["status"] == 201 for line in audit)
    assert any("uid=1003" in line["who"] and line["status"] == 403 for line in audit)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("pki-clients")
    files = {"ca": d / "ca.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    for name, cert in (
        ("server", ca.issue_cert("127.0.0.1")),
        ("alice", ca.issue_cert("alice@example", common_name="alice")),
        ("bob", ca.issue_cert("bob@example", common_name="robert")),
        ("eve", ca.issue_cert("eve@example", common_name="eve")),
    ):
        files[name] = d / f"{name}.pem"
        files[f"{name}-key"] = d / f"{name}-key.pem"
        cert.cert_chain_pems[0].write_to_path(str(files[name]))
        cert.private_key_pem.write_to_path(str(files[f"{name}-key"]))
    return {k: str(v) for k, v in files.items()}


def test_two_certificates_on_a_tls_listener(
    dockerd: str, pki: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    config = CLIENTS.replace("AUDIT", str(tmp_path / "audit.jsonl"))
    tls = [
        "--tlsverify",
        "--tlscacert",
        pki["ca"],
        "--tlscert",
        pki["server"],
        "--tlskey",
        pki["server-key"],
    ]
    ps = start_plugstrip(
        dockerd, tmp_path / "ps", config, ["--listen", f"tcp://127.0.0.1:{port}", *tls]
    )
    host = f"tcp://127.0.0.1:{port}"

    def as_cert(who: str) -> Docker:
        flags = [
            "--tlsverify",
            "--tlscacert",
            pki["ca"],
            "--tlscert",
            pki[who],
            "--tlskey",
            pki[f"{who}-key"],
        ]
        return lambda *args, check=True: docker(host, *flags, *args, check=check)

    try:
        wait_for(
            lambda: as_cert("alice")("version", check=False).returncode == 0,
            20,
            "TLS listener not up",
        )
        alice, bob, eve = as_cert("alice"), as_cert("bob"), as_cert("eve")
        alice("create", "--name", f"alice-{RUN}", "--network", "none", "busybox", "true")
        assert labels(dockerd, "container", "inspect", f"alice-{RUN}")[OWNER] == "cn:alice"
        out = alice("run", "--rm", "--privileged", "busybox", "true", check=False)
        assert b"privileged containers are not allowed" in out.stderr
        assert f"alice-{RUN}" in names(alice)
        assert f"alice-{RUN}" not in names(bob)  # bob matches by SAN: read-only, owns nothing
        out = bob("rm", "-f", f"alice-{RUN}", check=False)
        assert b"read-only" in out.stderr, out.stderr
        out = eve("ps", check=False)  # no rule set but the last: everything denied
        assert b"plugstrip policy: GET" in out.stderr and b"is denied" in out.stderr, out.stderr
        audit = (tmp_path / "audit.jsonl").read_text()
        assert "cn=alice" in audit and "cn=robert" in audit
    finally:
        ps.stop()
        docker(dockerd, "rm", "-f", f"alice-{RUN}", check=False)
