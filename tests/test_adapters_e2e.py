"""Adapters in the pipeline, driven by the real docker CLI: remote (Powerstrip protocol, in
their own process) and Python adapters rewriting, refusing and failing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import docker, free_port, wait_for


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The Powerstrip-protocol adapter server, on TCP and on a unix socket."""
    record = tmp_path / "record.jsonl"
    record.touch()
    port = free_port()
    unix = tmp_path / "adapter.sock"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.remote_adapter",
                "--port",
                str(port),
                "--record",
                str(record),
            ]
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.remote_adapter",
                "--unix",
                str(unix),
                "--record",
                str(record),
            ]
        ),
    ]
    import socket

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
        except OSError:
            return False
        return unix.exists()

    wait_for(up, 20, "remote adapter did not start")
    yield {"url": f"http://127.0.0.1:{port}", "unix": str(unix), "record": record}
    for p in procs:
        p.kill()  # it may be sleeping in /slow; a graceful stop would wait for it
        p.wait(10)


def recorded(remote: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in remote["record"].read_text().splitlines()]


def cname() -> str:
    return "a" + uuid.uuid4().hex[:10]


def exists(dockerd: str, name: str) -> bool:
    return docker(dockerd, "inspect", name, check=False).returncode == 0


def test_powerstrip_adapters_yml_unchanged(
    dockerd: str, plugstrip_factory: Any, remote: dict[str, Any]
) -> None:
    # Powerstrip's own example file, byte for byte in its shape.
    ps = plugstrip_factory(f"""
endpoints:
  "POST /*/containers/create":
    pre: [adder]
    post: [warner]
adapters:
  adder: {remote["url"]}/label
  warner: {remote["url"]}/warn
""")
    name = cname()
    out = docker(ps.host, "create", "--name", name, "busybox", "true")
    try:
        assert b"remote post-hook was here" in out.stderr  # the CLI prints create Warnings
        labels = docker(dockerd, "inspect", "-f", "{{json .Config.Labels}}", name).stdout
        assert json.loads(labels) == {"plugstrip.test": "from-remote"}
        pre, post = recorded(remote)
        assert pre["payload"]["PowerstripProtocolVersion"] == 1
        assert pre["payload"]["Type"] == "pre-hook"
        assert pre["payload"]["ClientRequest"]["Method"] == "POST"
        assert pre["payload"]["ClientRequest"]["Request"].endswith(
            f"/containers/create?name={name}"
        )
        assert json.loads(pre["payload"]["ClientRequest"]["Body"])["Image"] == "busybox"
        server = post["payload"]["ServerResponse"]
        assert server["Code"] == 201 and server["ContentType"] == "application/json"
        # the post-hook sees the request as it went upstream (with the label) and the original
        assert "from-remote" in post["payload"]["ClientRequest"]["Body"]
        assert "from-remote" not in post["payload"]["OriginalClientRequest"]["Body"]
    finally:
        docker(dockerd, "rm", "-f", name)


def test_remote_adapter_over_unix_socket(
    dockerd: str, plugstrip_factory: Any, remote: dict[str, Any]
) -> None:
    sock = remote["unix"].replace("/", "%2F")
    ps = plugstrip_factory(f"""
version: 1
endpoints:
  "POST /containers/create": {{pre: [adder]}}
adapters:
  adder: {{url: "http+unix://{sock}/label"}}
""")
    name = cname()
    docker(ps.host, "create", "--name", name, "busybox", "true")
    try:
        labels = docker(dockerd, "inspect", "-f", "{{json .Config.Labels}}", name).stdout
        assert json.loads(labels) == {"plugstrip.test": "from-remote"}
    finally:
        docker(dockerd, "rm", "-f", name)


def test_remote_refusal_reaches_cli_and_creates_nothing(
    dockerd: str, plugstrip_factory: Any, remote: dict[str, Any]
) -> None:
    ps = plugstrip_factory(f"""
endpoints:
  "POST /*/containers/create": {{pre: [nope]}}
adapters:
  nope: {remote["url"]}/refuse
""")
    name = cname()
    out = docker(ps.host, "run", "--name", name, "busybox", "true", check=False)
    assert out.returncode != 0
    assert b"Error response from daemon: not today, says the adapter" in out.stderr
    assert not exists(dockerd, name)


@pytest.mark.parametrize(
    ("path", "timeout", "expected"),
    [
        ("/slow", 1, b"timed out after 1s"),
        ("/boom", 5, b"adapter replied 500: adapter exploded"),
        ("/nonjson", 5, b"replied with invalid JSON"),
        (None, 5, b"cannot reach adapter"),
    ],
    ids=["timeout", "5xx", "non-json", "refused-connection"],
)
def test_remote_failures_fail_closed(
    dockerd: str,
    plugstrip_factory: Any,
    remote: dict[str, Any],
    path: str | None,
    timeout: int,
    expected: bytes,
) -> None:
    url = f"{remote['url']}{path}" if path else f"http://127.0.0.1:{free_port()}/nobody"
    ps = plugstrip_factory(f"""
endpoints:
  "POST /*/containers/create": {{pre: [flaky]}}
adapters:
  flaky: {{url: "{url}", timeout: {timeout}}}
""")
    name = cname()
    started = time.monotonic()
    out = docker(ps.host, "run", "--name", name, "busybox", "true", check=False, timeout=30)
    assert time.monotonic() - started < timeout + 10  # an error, never a hang
    assert out.returncode != 0
    assert b"Error response from daemon: plugstrip: adapter 'flaky' pre-hook failed" in out.stderr
    assert expected in out.stderr
    assert not exists(dockerd, name)


def test_python_adapters_rewrite_in_place_and_keep_context(
    dockerd: str, plugstrip_factory: Any
) -> None:
    ps = plugstrip_factory("""
endpoints:
  "POST /containers/create": {pre: [tag], post: [tag]}
adapters:
  tag: {python: "tests.sample_adapters:Tagger", options: {value: blue}}
""")
    name = cname()
    out = docker(ps.host, "create", "--name", name, "busybox", "true")
    try:
        assert b"tagged blue" in out.stderr
        labels = docker(dockerd, "inspect", "-f", "{{json .Config.Labels}}", name).stdout
        assert json.loads(labels) == {"plugstrip.tag": "blue"}
    finally:
        docker(dockerd, "rm", "-f", name)


def test_skip_policy_undoes_a_broken_adapter(dockerd: str, plugstrip_factory: Any) -> None:
    ps = plugstrip_factory("""
endpoints:
  "POST /containers/create": {pre: [broken, tag]}
adapters:
  broken: {python: "tests.sample_adapters:Broken", on_failure: skip}
  tag: {python: "tests.sample_adapters:Tagger"}
""")
    name = cname()
    docker(ps.host, "create", "--name", name, "busybox", "true")
    try:
        labels = docker(dockerd, "inspect", "-f", "{{json .Config.Labels}}", name).stdout
        assert json.loads(labels) == {"plugstrip.tag": "python"}  # no "half": "done"
    finally:
        docker(dockerd, "rm", "-f", name)


def test_python_adapter_timeout_fails_closed(dockerd: str, plugstrip_factory: Any) -> None:
    ps = plugstrip_factory("""
endpoints:
  "POST /containers/create": {pre: [sleepy]}
adapters:
  sleepy: {python: "tests.sample_adapters:Sleepy", timeout: 0.5}
""")
    name = cname()
    out = docker(ps.host, "create", "--name", name, "busybox", "true", check=False, timeout=20)
    assert b"adapter 'sleepy' pre-hook failed: timed out after 0.5s" in out.stderr
    assert not exists(dockerd, name)


def test_policy_refusals_are_clear_403s(
    dockerd: str, plugstrip_factory: Any, tmp_path: Path
) -> None:
    ps = plugstrip_factory(f"""
endpoints:
  "* /**": {{pre: [policy]}}
adapters:
  policy:
    use: policy
    options:
      privileged: false
      host_namespaces: false
      bind_mounts: ["{tmp_path}"]
      deny: ["POST /volumes/create"]
""")
    cases = [
        (["run", "--rm", "--privileged", "busybox", "true"], b"privileged containers"),
        (["run", "--rm", "--network", "host", "busybox", "true"], b"NetworkMode=host"),
        (["run", "--rm", "--pid", "host", "busybox", "true"], b"PidMode=host"),
        (["run", "--rm", "-v", "/etc:/x", "busybox", "true"], b"bind mount of /etc"),
        (
            ["run", "--rm", "--mount", "type=bind,src=/root,dst=/x", "busybox", "true"],
            b"bind mount of /root",
        ),
        (["volume", "create", "v1"], b"POST /v1.41/volumes/create is denied"),
    ]
    for args, why in cases:
        out = docker(ps.host, *args, check=False)
        assert out.returncode != 0, args
        assert b"Error response from daemon: plugstrip policy: " + why in out.stderr, out.stderr
    ok = docker(ps.host, "run", "--rm", "-v", f"{tmp_path}:/data", "busybox", "ls", "/data")
    assert ok.returncode == 0
    # only exec with Privileged is refused; the container itself is fine
    name = cname()
    docker(ps.host, "run", "-d", "--name", name, "busybox", "sleep", "30")
    try:
        out = docker(ps.host, "exec", "--privileged", name, "true", check=False)
        assert b"plugstrip policy: privileged execs are not allowed" in out.stderr
    finally:
        docker(dockerd, "rm", "-f", name)


def test_policy_read_only(plugstrip_factory: Any) -> None:
    ps = plugstrip_factory("""
endpoints:
  "* /**": {pre: [ro]}
adapters:
  ro: {use: policy, options: {read_only: true}}
""")
    assert docker(ps.host, "ps").returncode == 0
    out = docker(ps.host, "run", "--rm", "busybox", "true", check=False)
    assert b"plugstrip policy: the Docker API is read-only here" in out.stderr


def test_audit_logs_mutating_calls_with_outcome(
    dockerd: str, plugstrip_factory: Any, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    ps = plugstrip_factory(f"""
endpoints:
  "* /**": {{pre: [policy], post: [audit]}}
adapters:
  policy: {{use: policy, options: {{privileged: false}}}}
  audit: {{use: audit, options: {{path: "{log}"}}}}
""")
    name = cname()
    docker(ps.host, "run", "--name", name, "busybox", "true")
    docker(ps.host, "rm", name)
    docker(ps.host, "run", "--rm", "--privileged", "busybox", "true", check=False)

    def logged() -> list[dict[str, Any]]:
        return [json.loads(x) for x in log.read_text().splitlines()]

    # a call is audited when it has finished, after its answer went to the client
    wait_for(lambda: any(x["outcome"] == "refused" for x in logged()), 5, "no refusal audited")
    lines = logged()
    assert all(x["method"] != "GET" for x in lines)
    create = next(x for x in lines if x["request"].endswith(f"create?name={name}"))
    assert create["status"] == 201 and create["outcome"] == "ok"
    assert create["create"]["Image"] == "busybox" and create["who"].startswith("unix:uid=0")
    assert any(
        x["request"].endswith(f"/containers/{name}")
        and x["method"] == "DELETE"
        and x["status"] == 204
        for x in lines
    )
    refused = [x for x in lines if x["outcome"] == "refused"]
    assert refused and refused[0]["status"] == 403 and refused[0]["create"]["Privileged"]


def test_trace_shows_what_each_adapter_changed(dockerd: str, plugstrip_factory: Any) -> None:
    ps = plugstrip_factory("""
endpoints:
  "POST /containers/create": {pre: [tag], post: [tag]}
adapters:
  tag: {python: "tests.sample_adapters:Tagger"}
""")
    name = cname()
    docker(ps.host, "create", "--name", name, "busybox", "true")
    docker(dockerd, "rm", name)
    out = subprocess.run(
        ["plugstrip", "trace", "--state-dir", str(ps.workdir / "state")],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert f"/containers/create?name={name} -> 201" in out.stdout
    assert '+  "plugstrip.tag": "python"' in out.stdout.replace("\n        ", "\n")
    assert "post_hook tag" in out.stdout and "tagged python" in out.stdout


def test_a_pre_hook_can_answer_without_the_daemon(dockerd: str, plugstrip_factory: Any) -> None:
    ps = plugstrip_factory("""
endpoints:
  "* /networks/*": {pre: [owner], post: [owner]}
adapters:
  owner: {python: "tests.sample_adapters:OwnsDemoNetwork"}
""")
    out = docker(
        ps.host, "network", "inspect", "-f", "{{.Driver}} {{json .Labels}}", "plugstrip-demo"
    )
    assert out.stdout == b'plugstrip/weave {"seen-by-post-hook":"yes"}\n'
    # the daemon itself has no such network: the answer came from the adapter
    assert docker(dockerd, "network", "inspect", "plugstrip-demo", check=False).returncode != 0
    # other networks still go to the daemon
    assert docker(ps.host, "network", "inspect", "-f", "{{.Name}}", "none").stdout == b"none\n"
