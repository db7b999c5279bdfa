"""The docker CLI and docker-py through plugstrip (no adapters) behave as against the daemon.

Each scenario runs the same command directly and through the proxy and compares."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import subprocess
import threading
import time
import uuid
from pathlib import Path

import docker as dockerpy
import pytest

from plugstrip.cli.main import UnixHTTPConnection
from tests.harness import Plugstrip, docker


def both(
    direct: str, proxy: Plugstrip, *args: str, input: bytes | None = None
) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
    return (
        docker(direct, *args, input=input, check=False),
        docker(proxy.host, *args, input=input, check=False),
    )


def name() -> str:
    return "t" + uuid.uuid4().hex[:10]


def run_in_pty(host: str, args: list[str], timeout: float = 30) -> bytes:
    """Run the docker CLI on a real pseudo-terminal, as a user at a shell would."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        ["docker", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "DOCKER_HOST": host},
        close_fds=True,
    )
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                data = os.read(controller, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(controller)
    assert proc.returncode == 0, out
    return out


def test_run_output_and_exit_code(dockerd: str, proxy: Plugstrip) -> None:
    a, b = both(
        dockerd, proxy, "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3"
    )
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)
    assert b.returncode == 3 and b.stdout == b"out\n" and b.stderr == b"err\n"


def test_piped_stdin_reaches_container_and_eof_propagates(dockerd: str, proxy: Plugstrip) -> None:
    payload = os.urandom(600_000).hex().encode()  # 1.2 MB, more than any single buffer
    args = ("run", "--rm", "-i", "busybox", "sh", "-c", "md5sum; echo eof-seen")
    a, b = both(dockerd, proxy, *args, input=payload)
    expected = hashlib.md5(payload).hexdigest().encode()
    assert b.returncode == 0, b.stderr
    assert b.stdout == a.stdout
    assert b.stdout.startswith(expected) and b.stdout.endswith(b"eof-seen\n")


def test_run_interactive_tty(proxy: Plugstrip) -> None:
    out = run_in_pty(proxy.host, ["run", "--rm", "-it", "busybox", "sh", "-c", "tty; echo in-tty"])
    assert b"/dev/pts/0" in out and b"in-tty" in out


def test_exec_interactive_tty_and_piped(dockerd: str, proxy: Plugstrip) -> None:
    c = name()
    docker(proxy.host, "run", "-d", "--name", c, "busybox", "sleep", "60")
    try:
        out = run_in_pty(proxy.host, ["exec", "-it", c, "sh", "-c", "tty; echo in-exec"])
        assert b"in-exec" in out and b"/dev/pts/" in out
        a, b = both(dockerd, proxy, "exec", "-i", c, "cat", input=b"through exec\n")
        assert a.stdout == b.stdout == b"through exec\n"
    finally:
        docker(dockerd, "rm", "-f", c)


def test_attach_sees_output(dockerd: str, proxy: Plugstrip) -> None:
    c = name()
    docker(dockerd, "run", "-d", "--name", c, "busybox", "sh", "-c", "sleep 1; echo attached")
    try:
        out = docker(proxy.host, "attach", c, timeout=30)
        assert out.stdout == b"attached\n"
    finally:
        docker(dockerd, "rm", "-f", c)


def test_logs_follow_streams_lines_as_they_come(dockerd: str, proxy: Plugstrip) -> None:
    c = name()
    docker(
        dockerd,
        "run",
        "-d",
        "--name",
        c,
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4; do echo line$i; sleep 1; done",
    )
    try:
        proc = subprocess.Popen(
            ["docker", "logs", "-f", c],
            stdout=subprocess.PIPE,
            env={**os.environ, "DOCKER_HOST": proxy.host},
        )
        assert proc.stdout is not None
        started = time.monotonic()
        first = proc.stdout.readline()
        first_at = time.monotonic() - started
        rest = proc.stdout.read()
        proc.wait(10)
        # The first line must arrive while the container is still writing (~4 s), not
        # when the stream ends: chunks are passed on as they come.
        assert first == b"line1\n" and first_at < 2.5
        assert rest == b"line2\nline3\nline4\n"
        assert docker(dockerd, "logs", c).stdout == first + rest
    finally:
        docker(dockerd, "rm", "-f", c)


def test_events_stream(dockerd: str, proxy: Plugstrip) -> None:
    c = name()
    proc = subprocess.Popen(
        ["docker", "events", "--filter", f"container={c}", "--format", "{{.Action}}"],
        stdout=subprocess.PIPE,
        env={**os.environ, "DOCKER_HOST": proxy.host},
    )
    try:
        time.sleep(1)
        docker(dockerd, "run", "--name", c, "busybox", "true")
        docker(dockerd, "rm", c)
        assert proc.stdout is not None
        seen = []
        deadline = time.monotonic() + 10
        while "destroy" not in seen and time.monotonic() < deadline:
            seen.append(proc.stdout.readline().decode().strip())
        assert seen == ["create", "attach", "start", "die", "destroy"]
    finally:
        proc.kill()


def test_build_with_a_large_context(dockerd: str, proxy: Plugstrip, tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(os.urandom(40 << 20))
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nCOPY blob /blob\nRUN md5sum /blob\n")
    tag = f"ps-build-{uuid.uuid4().hex[:8]}"
    out = docker(
        proxy.host, "build", "-t", tag, str(tmp_path), timeout=300, env={"DOCKER_BUILDKIT": "0"}
    )
    want = hashlib.md5((tmp_path / "blob").read_bytes()).hexdigest()
    assert want.encode() in out.stdout
    docker(dockerd, "rmi", tag)


def test_cp_both_ways(dockerd: str, proxy: Plugstrip, tmp_path: Path) -> None:
    c = name()
    docker(dockerd, "run", "-d", "--name", c, "busybox", "sleep", "60")
    try:
        src = tmp_path / "in.bin"
        src.write_bytes(os.urandom(20 << 20))
        docker(proxy.host, "cp", str(src), f"{c}:/tmp/in.bin")
        docker(proxy.host, "cp", f"{c}:/tmp/in.bin", str(tmp_path / "back.bin"))
        assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    finally:
        docker(dockerd, "rm", "-f", c)


def test_cp_into_an_existing_directory_ten_times(
    dockerd: str, proxy: Plugstrip, tmp_path: Path
) -> None:
    """The CLI stats /tmp first: dockerd answers that HEAD with no length header and keeps
    the connection, and the CLI sends the archive on it next."""
    c = name()
    docker(dockerd, "run", "-d", "--name", c, "busybox", "sleep", "60")
    try:
        src = tmp_path / "f.bin"
        src.write_bytes(os.urandom(1 << 20))
        for i in range(10):
            out = docker(proxy.host, "cp", str(src), f"{c}:/tmp/", check=False)
            assert out.returncode == 0, f"try {i}: {out.stderr.decode(errors='replace')}"
            docker(proxy.host, "cp", f"{c}:/tmp/f.bin", str(tmp_path / f"back{i}"))
            assert (tmp_path / f"back{i}").read_bytes() == src.read_bytes()
    finally:
        docker(dockerd, "rm", "-f", c)


def test_stats_no_stream_and_wait(dockerd: str, proxy: Plugstrip) -> None:
    c, w = name(), name()
    docker(dockerd, "run", "-d", "--name", c, "busybox", "sleep", "60")
    docker(dockerd, "run", "-d", "--name", w, "busybox", "sh", "-c", "sleep 1; exit 7")
    try:
        a, b = both(dockerd, proxy, "stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", c)
        assert a.stdout == b.stdout == f"{c} 1\n".encode()
        assert docker(proxy.host, "wait", w, timeout=30).stdout == b"7\n"
    finally:
        docker(dockerd, "rm", "-f", c, w)


def test_save_and_load(dockerd: str, proxy: Plugstrip, tmp_path: Path) -> None:
    direct_tar, proxied_tar = tmp_path / "direct.tar", tmp_path / "proxied.tar"
    docker(dockerd, "save", "-o", str(direct_tar), "busybox:latest")
    docker(proxy.host, "save", "-o", str(proxied_tar), "busybox:latest")
    assert proxied_tar.read_bytes() == direct_tar.read_bytes()
    out = docker(proxy.host, "load", "-i", str(proxied_tar))
    assert b"busybox:latest" in out.stdout


def test_inspect_ps_and_errors_match(dockerd: str, proxy: Plugstrip) -> None:
    a, b = both(dockerd, proxy, "inspect", "busybox:latest")
    assert a.stdout == b.stdout
    a, b = both(dockerd, proxy, "inspect", "no-such-thing-here")
    assert (a.returncode, a.stderr) == (b.returncode, b.stderr)
    a, b = both(dockerd, proxy, "run", "--rm", "no-such-image-here:1")
    assert a.returncode == b.returncode != 0
    assert b"No such image" in b.stderr or b"pull access denied" in b.stderr or b.stderr


def test_head_and_unversioned_paths(dockerd: str, proxy: Plugstrip) -> None:
    """On one kept-alive connection each, so a HEAD's answer is followed by others."""
    through, direct = UnixHTTPConnection(proxy.socket), UnixHTTPConnection(dockerd[7:])

    def ask(conn: UnixHTTPConnection, method: str, path: str) -> tuple[int, bytes, str | None]:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Api-Version")

    assert ask(through, "HEAD", "/_ping") == ask(direct, "HEAD", "/_ping")
    kept = through.sock  # http.client would reconnect unseen if the proxy had closed it
    for method, path in [
        ("GET", "/_ping"),
        ("HEAD", "/version"),
        ("GET", "/v1.41/_ping"),
        ("GET", "/version"),
        ("GET", "/images/json"),
    ]:
        assert ask(through, method, path) == ask(direct, method, path)
    assert through.sock is kept
    through.close()
    direct.close()


def test_docker_py_streams_and_attach_socket(proxy: Plugstrip) -> None:
    client = dockerpy.DockerClient(base_url=proxy.host)
    assert client.containers.run("busybox", "echo via-docker-py", remove=True) == b"via-docker-py\n"
    ct = client.containers.create("busybox", "cat", stdin_open=True)
    try:
        sock = ct.attach_socket(params={"stdin": 1, "stream": 1, "stdout": 1})
        ct.start()
        sock._sock.sendall(b"over the hijack\n")
        got = b""
        deadline = time.monotonic() + 10
        while b"over the hijack" not in got and time.monotonic() < deadline:
            got += sock._sock.recv(4096)
        # 8-byte multiplexing header (stdout, length 16) then the line back from cat
        assert got == b"\x01\x00\x00\x00\x00\x00\x00\x10over the hijack\n"
        sock.close()
        exit_code, output = ct.exec_run("sh -c 'echo one; echo two >&2'", demux=True)
        assert (exit_code, output) == (0, (b"one\n", b"two\n"))
    finally:
        ct.remove(force=True)
        client.close()


def test_many_concurrent_connections(dockerd: str, proxy: Plugstrip) -> None:
    errors: list[str] = []

    def worker() -> None:
        for _ in range(5):
            r = docker(proxy.host, "version", "--format", "{{.Server.APIVersion}}", check=False)
            if r.returncode != 0 or r.stdout != b"1.41\n":
                errors.append(r.stderr.decode())

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []


def raw_attach(sock_path: str, direct: str, upgrade: bool) -> tuple[bytes, bytes]:
    """Attach with a raw socket, send a line, half-close; returns (status line, output)."""
    import socket

    c = name()
    docker(direct, "create", "-i", "--name", c, "busybox", "cat")
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock_path)
        extra = "Connection: Upgrade\r\nUpgrade: tcp\r\n" if upgrade else ""
        s.sendall(
            f"POST /v1.41/containers/{c}/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n"
            f"Host: docker\r\n{extra}Content-Length: 0\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        docker(direct, "start", c)
        s.sendall(b"ping\n")
        s.shutdown(socket.SHUT_WR)  # half-close: cat sees EOF and exits, output still comes
        got = b""
        s.settimeout(10)
        while chunk := s.recv(4096):
            got += chunk
        return head.split(b"\r\n")[0], got
    finally:
        docker(direct, "rm", "-f", c)


@pytest.mark.parametrize("upgrade", [True, False], ids=["101-upgrade", "legacy-200"])
def test_raw_attach_forms(dockerd: str, proxy: Plugstrip, upgrade: bool) -> None:
    """POST attach with Upgrade (101) and without (the legacy 200 raw stream)."""
    through = raw_attach(proxy.socket, dockerd, upgrade)
    direct = raw_attach(dockerd[len("unix://") :], dockerd, upgrade)
    assert through == direct
    assert through[0] == (b"HTTP/1.1 101 UPGRADED" if upgrade else b"HTTP/1.1 200 OK")
    assert through[1] == b"\x01\x00\x00\x00\x00\x00\x00\x05ping\n"  # stdout frame


async def _ws_attach(sock_path: str, container: str) -> bytes:
    import aiohttp

    path = f"/v1.41/containers/{container}/attach/ws?stream=1&stdin=1&stdout=1"
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(sock_path)) as session,
        session.ws_connect(f"http://localhost{path}") as ws,
    ):
        await ws.send_bytes(b"over websocket\n")
        got = b""
        while b"over websocket" not in got:
            msg = await ws.receive(timeout=10)
            got += msg.data if isinstance(msg.data, bytes) else msg.data.encode()
        return got


async def test_websocket_attach(dockerd: str, proxy: Plugstrip) -> None:
    c = name()
    docker(dockerd, "run", "-d", "-i", "--name", c, "busybox", "cat")
    try:
        through = await _ws_attach(proxy.socket, c)
        direct = await _ws_attach(dockerd[len("unix://") :], c)
        assert through == direct == b"over websocket\n"
    finally:
        docker(dockerd, "rm", "-f", c)
