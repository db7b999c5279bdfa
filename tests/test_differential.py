"""Transparency measured, not assumed: every workload runs twice, through a recording tap
in front of the daemon and through one in front of plugstrip (networks on, as serve runs
by default), and the two runs' connections must read the same: request heads, answers,
body digests, and who closed after which exchange. A third tap between plugstrip and the
daemon records what plugstrip made of each call: it must equal, exactly, what the client
got through plugstrip (no normalising there: the same run, the same bytes).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import shutil
import socket
import socketserver
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker as dockerpy
import pytest

from plugstrip.proxy.docker_api import USER_AGENT
from tests import harness
from tests.difftap import IdNormaliser, Tap, diff, transcripts
from tests.harness import Plugstrip, docker

Workload = Callable[[str], None]


@dataclass
class Rig:
    direct: Tap  # client -> daemon
    proxied: Tap  # client -> plugstrip
    upstream: Tap  # plugstrip -> daemon
    ps: Plugstrip

    def compare(self, workload: Workload, normalise: bool = True) -> None:
        for tap in (self.direct, self.proxied, self.upstream):
            tap.reset()
        workload(self.direct.host)
        workload(self.proxied.host)
        for tap in (self.direct, self.proxied, self.upstream):
            tap.settle()
        norm = IdNormaliser(self.direct, self.proxied) if normalise else (lambda b: b)
        direct, proxied = transcripts(self.direct, norm), transcripts(self.proxied, norm)
        found = diff(direct, proxied)
        if found and (dump := os.environ.get("DIFFTAP_DUMP")):
            for name, tap in (
                ("direct", self.direct),
                ("proxied", self.proxied),
                ("up", self.upstream),
            ):
                for i, c in enumerate(tap.connections):
                    Path(dump, f"{name}-{i}.up").write_bytes(c.to_server)
                    Path(dump, f"{name}-{i}.down").write_bytes(c.to_client)
        assert not found, f"direct vs through plugstrip: {found}"
        # What the daemon sent plugstrip is what plugstrip's client got, byte for byte;
        # plugstrip's own calls (the network adapter's) are no client's.
        own = f"> user-agent: {USER_AGENT}"
        upstream = [t for t in transcripts(self.upstream) if own not in t]
        found = diff(upstream, transcripts(self.proxied))
        assert not found, f"daemon's side vs client's side of plugstrip: {found}"


def _rig(upstream_sock: str, extra: list[str]) -> Iterator[Rig]:
    work = Path(tempfile.mkdtemp(prefix="ps-diff-"))  # short: unix socket paths
    try:
        with (
            Tap(work / "d.sock", upstream_sock) as direct,
            Tap(work / "u.sock", upstream_sock) as up,
        ):
            ps = harness.start_plugstrip(up.host, work / "ps", extra=extra)
            try:
                with Tap(work / "p.sock", ps.socket) as proxied:
                    time.sleep(1)  # the network adapter's start-up calls
                    yield Rig(direct, proxied, up, ps)
            finally:
                ps.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def rig(dockerd: str) -> Iterator[Rig]:
    yield from _rig(dockerd[len("unix://") :], [])


C = "difftest"


def test_cli_scenarios(rig: Rig, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(300_000))
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx/Dockerfile").write_text("FROM busybox:latest\nRUN echo built > /b\n")

    def workload(host: str) -> None:
        def d(*args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
            return docker(host, *args, **kw)  # type: ignore[arg-type]

        d("version")
        # stderr a moment after stdout: the daemon copies them in two goroutines.
        ran = d(
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "echo out; sleep 0.2; echo err >&2; exit 3",
            check=False,
        )
        assert (ran.returncode, ran.stdout, ran.stderr) == (3, b"out\n", b"err\n"), (host, ran)
        d("run", "-i", "--rm", "busybox", "cat", input=b"piped\n")
        d("run", "-d", "--name", C, "busybox", "sleep", "60")
        try:
            d("exec", C, "sh", "-c", "echo exec-out")
            d("exec", "-i", C, "cat", input=b"exec-in\n")
            d("logs", C)
            d("inspect", "busybox:latest")
            d("inspect", "no-such-thing", check=False)
            d("restart", "-t", "0", C)
        finally:
            d("rm", "-f", C)
        said = d("run", "--name", C, "busybox", "sh", "-c", "echo attach-out")
        assert said.stdout == b"attach-out\n", (host, said)
        d("wait", C)
        d("rm", C)
        d("build", "--no-cache", "-q", "-t", "difftest:1", str(tmp_path / "ctx"))
        d("rmi", "difftest:1")
        d("save", "-o", str(tmp_path / "saved.tar"), "busybox:latest")

    rig.compare(workload)


def test_docker_cp_into_and_out_of_an_existing_directory(rig: Rig, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(1 << 20))

    def workload(host: str) -> None:
        docker(host, "run", "-d", "--name", C, "busybox", "sleep", "60")
        try:
            for _ in range(10):
                docker(host, "cp", str(src), f"{C}:/tmp/")
            for i in range(10):
                docker(host, "cp", f"{C}:/tmp/f.bin", str(tmp_path / f"back{i}"))
        finally:
            docker(host, "rm", "-f", C)

    rig.compare(workload)
    assert (tmp_path / "back9").read_bytes() == src.read_bytes()


def _chunked(body: bytes) -> list[bytes | float]:
    """``body`` as chunks of every shape the grammar takes (sizes with leading zeros and
    upper-case hex, extensions with token and quoted values, a trailer field), with pauses
    that cut a size line and a chunk's data between reads."""
    cuts = [0, 1, 512, 4608, len(body) // 2, len(body)]
    exts = [b"", b";a=b", b';q="x y\\"";flag', b";" + b"e" * 200, b""]
    out: list[bytes | float] = []
    for (lo, hi), ext in zip(itertools.pairwise(cuts), exts, strict=True):
        size, mid = b"%06X" % (hi - lo), min(lo + 7, hi)
        out += [size[:3], 0.05, size[3:] + ext + b"\r\n" + body[lo:mid], 0.05]
        out.append(body[mid:hi] + b"\r\n")
    return [*out, b"0;last\r\nX-Check: 1\r\n\r\n"]


def test_chunked_uploads_end_where_the_daemon_ends_them(rig: Rig) -> None:
    # The daemon is the parser: a chunked upload with extensions and a trailer, then a
    # request pipelined right after its last chunk, must read through plugstrip (which
    # relays it as framed) as it reads directly.
    marker = b"chunked-marker-" + os.urandom(16).hex().encode()
    content = marker * 700  # about 33 KB: chunks of several reads
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("marker.txt")
        info.size, info.mtime = len(content), 1_700_000_000
        tar.addfile(info, io.BytesIO(content))
    put = (
        f"PUT /containers/{C}/archive?path=/tmp HTTP/1.1\r\nHost: docker\r\n"
        "Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    get = (
        f"GET /containers/{C}/archive?path=/tmp/marker.txt HTTP/1.1\r\nHost: docker\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    got: dict[str, bytes] = {}

    def workload(host: str) -> None:
        docker(host, "run", "-d", "--name", C, "busybox", "sleep", "60")
        try:
            script = [put, *_chunked(packed.getvalue())]
            script[-1] += get  # type: ignore[operator]  # pipelined: in the same write
            got[host] = _client(host, script, quiet=None)
            # A digest, not the file: a long output's stream frames vary from run to run.
            summed = docker(host, "exec", C, "sha256sum", "/tmp/marker.txt")
            assert summed.stdout.split()[0].decode() == hashlib.sha256(content).hexdigest()
        finally:
            docker(host, "rm", "-f", C)

    rig.compare(workload)
    for host, answers in got.items():
        assert answers.startswith(b"HTTP/1.1 200 OK\r\n"), (host, answers[:200])
        assert answers.count(b"HTTP/1.1 200 OK\r\n") == 2 and marker in answers, host


def test_compose_project_up_and_down(rig: Rig, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "docker-compose.yml").write_text(
        "version: '2.4'\nservices:\n  app:\n    image: busybox:latest\n"
        "    command: sleep 60\n    network_mode: none\n"
    )

    def workload(host: str) -> None:
        env = {**os.environ, "DOCKER_HOST": host, "COMPOSE_PROJECT_NAME": "difftest"}
        for args in (["up", "-d"], ["ps"], ["down", "-t", "0"]):
            done = subprocess.run(
                ["docker-compose", *args], cwd=project, env=env, capture_output=True, timeout=120
            )
            assert done.returncode == 0, done.stderr.decode(errors="replace")

    rig.compare(workload)


def test_docker_py_session(rig: Rig) -> None:
    """Containers, images, exec, logs, events. (Attach is left to the CLI scenarios:
    docker-py's attach_socket reads ahead into its own buffer, so what it shows of a
    stream depends on timing on either path.)"""

    def workload(host: str) -> None:
        client = dockerpy.DockerClient(base_url=host)
        try:
            since = int(time.time())
            said = client.containers.run("busybox", "echo hi", name=f"{C}-hi", remove=True)
            assert said == b"hi\n"
            done = client.containers.run("busybox", "echo logged", name=f"{C}-log", detach=True)
            done.wait()
            assert done.logs() == b"logged\n"
            done.remove()
            ct = client.containers.run("busybox", ["sleep", "60"], name=C, detach=True)
            try:
                assert ct.exec_run("echo exec").output == b"exec\n"
                client.images.list()
                client.containers.list(all=True, filters={"name": C})
            finally:
                ct.remove(force=True)
            until = int(time.time()) + 1
            events = client.events(since=since, until=until, filters={"container": C})
            assert [e for e in events]
        finally:
            client.close()

    rig.compare(workload)


# ---- a synthetic upstream: every framing edge the daemon does or may produce -----------


ANSWERS: dict[str, bytes] = {
    "/head-nolen": b"HTTP/1.1 200 OK\r\nX-Stat: e30=\r\n\r\n",
    "/head-len": b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
    "/204": b"HTTP/1.1 204 No Content\r\n\r\n",
    "/204-len": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    "/304": b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
    "/304-len": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n",
    "/1xx": b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/chunked-trailers": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
    b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Sum: 7\r\n\r\n",
    "/close-delimited": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
    "/legacy-hijack": b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n"
    b"raw from upstream",
}


class _Upstream(socketserver.BaseRequestHandler):
    """Reads each request (its body by Content-Length or chunks) and answers from ANSWERS;
    Expect: 100-continue is answered as Go's server does: 100 once the body is wanted, or
    a final 417 with Connection: close for /refuse-body."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            first, *lines = head.decode().split("\r\n")
            method, target, _ = first.split(" ")
            path = target.partition("?")[0]
            if path.endswith("/attach"):
                path = "/legacy-hijack"
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
            if headers.get("expect", "").lower() == "100-continue":
                if path == "/refuse-body":
                    sock.sendall(
                        b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n"
                        b"Connection: close\r\n\r\n"
                    )
                    return
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            length = int(headers.get("content-length", "0"))
            while len(buf) < length:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            body, buf = buf[:length], buf[length:]
            if path == "/legacy-hijack":
                sock.sendall(ANSWERS[path])
                while data := sock.recv(65536):  # a raw pipe from here: echo what comes
                    sock.sendall(data)
                return
            answer = ANSWERS.get(path, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b"
                                 % (len(body), body))  # fmt: skip
            if method == "HEAD":  # the final head, and no body after it
                answer = answer[: answer.rfind(b"\r\n\r\n") + 4]
            sock.sendall(answer)
            if path == "/close-delimited":
                sock.close()
                return


def _client(host: str, script: list[bytes | float], quiet: float | None = 0.5) -> bytes:
    """Write the script's bytes (a float: pause) on one connection; return what comes
    until the peer closes, or (with ``quiet``) until it is quiet that long."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(host[len("unix://") :])
        s.settimeout(30 if quiet is None else quiet)
        for step in script:
            if isinstance(step, float):
                time.sleep(step)
            else:
                s.sendall(step)
        got = b""
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                if quiet is None:
                    raise
                return got
            if not data:
                return got
            got += data


def _get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


SCRIPTS: dict[str, list[bytes | float]] = {
    "bodiless answers, one kept-alive connection": [
        x
        for path, method in [
            ("/head-nolen", "HEAD"),
            ("/head-len", "HEAD"),
            ("/204", "DELETE"),
            ("/204-len", "POST"),
            ("/304", "GET"),
            ("/304-len", "GET"),
            ("/1xx", "HEAD"),
            ("/1xx", "GET"),
            ("/chunked-trailers", "GET"),
            ("/close-delimited", "GET"),
        ]
        for x in (_get(path, method), 0.05)
    ],
    "pipelined requests": [_get("/head-len", "HEAD") + _get("/1xx") + _get("/echo")],
    "http/1.0 client": [b"GET /chunked-trailers HTTP/1.0\r\n\r\n"],
    "expect 100-continue on PUT": [
        b"PUT /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Type: "
        b"application/x-tar\r\nContent-Length: 5\r\n\r\n",
        0.2,
        b"hello",
    ],
    "expect 100-continue on a held JSON POST": [
        b"POST /containers/create HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n",
        0.2,
        b"{}",
    ],
    "expect 100-continue refused": [
        b"PUT /refuse-body HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5"
        b"\r\n\r\n",
        0.3,
    ],
    "upgrade answered with the legacy 200": [
        b"POST /containers/x/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 0\r\n\r\n",
        0.1,
        b"typed in",
        0.1,
    ],
}


@pytest.fixture
def synthetic() -> Iterator[Rig]:
    work = Path(tempfile.mkdtemp(prefix="ps-syn-"))
    server = socketserver.ThreadingUnixStreamServer(str(work / "up.sock"), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # No daemon behind it: the network adapter, which follows the daemon, is off.
        yield from _rig(str(work / "up.sock"), ["--no-networks"])
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_synthetic_framing_edges(synthetic: Rig, script: str) -> None:
    synthetic.compare(lambda host: _client(host, SCRIPTS[script]), normalise=False)
