"""`plugstrip serve` as an operator runs it: sockets, TLS, refusal of open TCP, drain,
reloads, metrics, a missing daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.harness import Plugstrip, docker, free_port, wait_for


def test_unix_socket_copies_daemon_socket_owner_and_mode(dockerd: str, proxy: Plugstrip) -> None:
    want = os.stat(dockerd[len("unix://") :])
    got = os.stat(proxy.socket)
    assert (got.st_uid, got.st_gid, got.st_mode & 0o777) == (
        want.st_uid,
        want.st_gid,
        want.st_mode & 0o777,
    )


def test_plain_tcp_on_a_public_address_is_refused_unless_forced(
    dockerd: str, tmp_path: Path
) -> None:
    port = free_port()
    args = [
        "plugstrip",
        "serve",
        "--upstream",
        dockerd,
        "--state-dir",
        str(tmp_path),
        "--listen",
        f"tcp://0.0.0.0:{port}",
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    assert "refusing to listen on tcp://0.0.0.0" in out.stderr and "--tlsverify" in out.stderr
    proc = subprocess.Popen([*args, "--allow-insecure-tcp"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(
            lambda: docker(f"tcp://127.0.0.1:{port}", "version", check=False).returncode == 0,
            20,
            "forced insecure listener did not serve",
        )
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "without verified TLS" in err


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("pki")
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example", common_name="alice")
    files = {
        "ca": d / "ca.pem",
        "cert": d / "cert.pem",
        "key": d / "key.pem",
        "scert": d / "server-cert.pem",
        "skey": d / "server-key.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    server.cert_chain_pems[0].write_to_path(str(files["scert"]))
    server.private_key_pem.write_to_path(str(files["skey"]))
    return {k: str(v) for k, v in files.items()}


def test_tlsverify_listener_and_tls_upstream(
    dockerd: str, plugstrip_factory: Any, pki: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    plugstrip_factory(
        extra=[
            "--listen",
            f"tcp://127.0.0.1:{port}",
            "--tlsverify",
            "--tlscacert",
            pki["ca"],
            "--tlscert",
            pki["scert"],
            "--tlskey",
            pki["skey"],
        ],
        name="tls",
    )
    host = f"tcp://127.0.0.1:{port}"
    wait_for(lambda: _port_open(port), 20, "TLS listener not up")
    tls = [
        "--tlsverify",
        "--tlscacert",
        pki["ca"],
        "--tlscert",
        pki["cert"],
        "--tlskey",
        pki["key"],
    ]
    ok = docker(host, *tls, "run", "--rm", "busybox", "echo", "over-tls")
    assert ok.stdout == b"over-tls\n"
    # the CLI half-closes TLS (close_notify) after stdin, then reads the output
    piped = docker(host, *tls, "run", "--rm", "-i", "busybox", "cat", input=b"half-closed\n")
    assert piped.stdout == b"half-closed\n"
    no_cert = docker(host, "--tlsverify", "--tlscacert", pki["ca"], "version", check=False)
    assert no_cert.returncode != 0
    # A second plugstrip whose upstream is the first one, over verified TLS.
    chained = subprocess.Popen(
        [
            "plugstrip",
            "serve",
            "--listen",
            f"unix://{tmp_path}/c.sock",
            "--upstream",
            host,
            "--state-dir",
            str(tmp_path / "c"),
            "--upstream-tlsverify",
            "--upstream-tlscacert",
            pki["ca"],
            "--upstream-tlscert",
            pki["cert"],
            "--upstream-tlskey",
            pki["key"],
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (tmp_path / "c.sock").exists(), 20, "chained proxy not up")
        out = docker(
            f"unix://{tmp_path}/c.sock",
            "run",
            "--rm",
            "-i",
            "busybox",
            "cat",
            input=b"through two proxies and TLS\n",
        )
        assert out.stdout == b"through two proxies and TLS\n"
    finally:
        chained.terminate()
        chained.wait(20)


def _port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def test_sigterm_lets_calls_in_flight_finish(dockerd: str, proxy: Plugstrip) -> None:
    result: dict[str, Any] = {}
    name = "drain-" + uuid.uuid4().hex[:8]

    def run() -> None:
        result["out"] = docker(
            proxy.host,
            "run",
            "--rm",
            "--name",
            name,
            "busybox",
            "sh",
            "-c",
            "sleep 2; echo finished",
            check=False,
        )

    t = threading.Thread(target=run)
    t.start()
    # SIGTERM only once the call is in flight: attached, and the container running
    wait_for(
        lambda: (
            docker(dockerd, "inspect", "-f", "{{.State.Running}}", name, check=False).stdout
            == b"true\n"
        ),
        20,
        "container did not start",
    )
    proxy.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: not Path(proxy.socket).exists(), 5, "socket not removed on SIGTERM")
    refused = docker(proxy.host, "version", check=False)  # no new calls while draining
    t.join(30)
    assert proxy.proc.wait(20) == 0
    assert result["out"].stdout == b"finished\n", result["out"].stderr
    assert refused.returncode != 0


def test_reload_on_sighup_and_on_change_keeps_old_config_when_new_is_bad(
    dockerd: str, plugstrip_factory: Any
) -> None:
    def config(value: str) -> str:
        return (
            'endpoints: {"POST /containers/create": {pre: [tag]}}\n'
            f'adapters: {{tag: {{python: "tests.sample_adapters:Tagger", '
            f"options: {{value: {value}}}}}}}\n"
        )

    ps = plugstrip_factory(config("one"))
    cfg = ps.workdir / "adapters.yml"

    def label() -> str:
        name = "r" + uuid.uuid4().hex[:8]
        docker(ps.host, "create", "--name", name, "busybox", "true")
        out = docker(dockerd, "inspect", "-f", '{{index .Config.Labels "plugstrip.tag"}}', name)
        docker(dockerd, "rm", name)
        return out.stdout.decode().strip()

    assert label() == "one"
    cfg.write_text(config("two"))
    ps.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: label() == "two", 10, "SIGHUP did not reload")
    cfg.write_text("endpoints: {broken")
    ps.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert label() == "two"
    assert b"configuration not reloaded" in ps.log.read_bytes()
    cfg.write_text(config("three"))  # no signal: the file watcher notices
    wait_for(lambda: label() == "three", 15, "file change did not reload")


def test_metrics_and_status_on_the_admin_listener(dockerd: str, plugstrip_factory: Any) -> None:
    ps = plugstrip_factory(
        'endpoints: {"POST /containers/create": {pre: [tag]}}\n'
        'adapters: {tag: {python: "tests.sample_adapters:Tagger"}}\n'
    )
    name = "m" + uuid.uuid4().hex[:8]
    docker(ps.host, "create", "--name", name, "busybox", "true")
    docker(dockerd, "rm", name)
    docker(ps.host, "run", "--rm", "busybox", "true")  # its attach is hijacked (101)
    text = urllib.request.urlopen(ps.admin + "/metrics", timeout=10).read().decode()
    assert (
        'plugstrip_requests_total{endpoint="/containers/{id}/attach",method="POST",'
        'status="101"} 1.0'
    ) in text
    assert (
        'plugstrip_requests_total{endpoint="/containers/create",method="POST",status="201"} 2.0'
    ) in text
    assert (
        'plugstrip_adapter_latency_seconds_count{adapter="tag",hook="pre_hook",outcome="ok"} 2.0'
    ) in text
    assert "plugstrip_upstream_latency_seconds_bucket" in text
    assert "plugstrip_open_hijacks 0.0" in text
    status = urllib.request.urlopen(ps.admin + "/status", timeout=10).read()
    assert b'"adapters": ["tag"]' in status


def test_daemon_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    sock = tmp_path / "p.sock"
    proc = subprocess.Popen(
        [
            "plugstrip",
            "serve",
            "--listen",
            f"unix://{sock}",
            "--upstream",
            f"unix://{tmp_path}/nothing.sock",
            "--state-dir",
            str(tmp_path),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(sock.exists, 20, "no socket")
        out = docker(f"unix://{sock}", "ps", check=False)
        assert out.returncode != 0
        assert b"plugstrip cannot reach the Docker daemon at unix://" in out.stderr
    finally:
        proc.terminate()
        proc.wait(20)


def test_port_zero_means_any_free_port(plugstrip_factory: Any) -> None:
    """`tcp://HOST:0` binds a free port (not the default one), and the state dir says
    which, so `plugstrip trace` finds the admin listener."""
    ps = plugstrip_factory(
        extra=["--listen", "tcp://127.0.0.1:0", "--admin", "tcp://127.0.0.1:0"], name="zero"
    )
    written = ps.workdir / "state" / "serve.json"  # after every listener, the admin one too
    wait_for(written.exists, 20, "serve.json not written")
    runtime = json.loads(written.read_text())
    tcp = next(url for url in runtime["listen"] if url.startswith("tcp://"))
    ports = {int(tcp.rsplit(":", 1)[1]), int(runtime["admin"].rsplit(":", 1)[1])}
    assert not ports & {0, 2375, 9323}  # neither zero nor the defaults it once became
    assert docker(tcp, "version", "--format", "{{.Server.APIVersion}}").stdout.strip()
    metrics = urllib.request.urlopen(f"http://{runtime['admin'][6:]}/metrics", timeout=10)
    assert b"plugstrip_requests_total" in metrics.read()
    traced = subprocess.run(
        ["plugstrip", "trace", "--state-dir", str(ps.workdir / "state")],
        capture_output=True,
        timeout=30,
    )
    assert traced.returncode == 0, traced.stderr


def _serve_once(tmp_path: Path, dockerd: str, listen: str, config: str) -> Any:
    cfg = tmp_path / "adapters.yml"
    cfg.write_text(config)
    return subprocess.Popen(
        [
            "plugstrip",
            "serve",
            "--no-networks",
            "--listen",
            listen,
            "--upstream",
            dockerd,
            "--config",
            str(cfg),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_adapters_start_before_calls_and_close_after_and_on_a_failed_start(
    dockerd: str, tmp_path: Path
) -> None:
    log = tmp_path / "life.log"
    config = (
        "endpoints:\n"
        '  "GET /containers/json": {pre: [life]}\n'
        "adapters:\n"
        f"  life: {{python: tests.sample_adapters:Lifecycle, options: {{log: {log}}}}}\n"
    )
    sock = tmp_path / "p.sock"
    proc = _serve_once(tmp_path, dockerd, f"unix://{sock}", config)
    try:
        wait_for(sock.exists, 20, "no socket")
        assert docker(f"unix://{sock}", "ps").returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert _lines(log) == ["start", "call", "close"]

    # listening fails after the adapters started: they are closed all the same
    log.unlink()
    busy = tmp_path / "busy.sock"
    holder = subprocess.Popen(  # another process listening on the socket plugstrip wants
        [
            "python3",
            "-c",
            f"import socket,time; s=socket.socket(socket.AF_UNIX); "
            f"s.bind('{busy}'); s.listen(); time.sleep(60)",
        ]
    )
    try:
        wait_for(busy.exists, 10, "no busy socket")
        failed = _serve_once(tmp_path, dockerd, f"unix://{busy}", config)
        _, err = failed.communicate(timeout=30)
    finally:
        holder.kill()
        holder.wait()
    assert failed.returncode == 2 and "in use by another process" in err, err
    assert _lines(log) == ["start", "close"]

    # an adapter that fails to start: a clear error, and every adapter is closed
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    config = (
        "endpoints:\n"
        '  "GET /containers/json": {pre: [first, second]}\n'
        "adapters:\n"
        f"  first: {{python: tests.sample_adapters:Lifecycle, options: {{log: {first}}}}}\n"
        "  second: {python: tests.sample_adapters:Lifecycle, "
        f"options: {{log: {second}, fail_start: true}}}}\n"
    )
    failed = _serve_once(tmp_path, dockerd, f"unix://{tmp_path}/q.sock", config)
    _, err = failed.communicate(timeout=30)
    assert failed.returncode == 2, err
    assert "plugstrip: adapters.second: could not start: cannot start" in err, err
    assert _lines(first) == ["start", "close"] and _lines(second) == ["start", "close"]
    assert not (tmp_path / "q.sock").exists()  # it never listened
