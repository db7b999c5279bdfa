"""Byte-for-byte transparency, checked against a recording upstream (a real unix socket
peer that records what arrives and answers with odd but valid HTTP)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import start_plugstrip

ODD_RESPONSE = (
    b"HTTP/1.1 200 Fine Thanks\r\nx-lower-case: kept\r\nContent-Type: text/plain\r\n"
    b"Transfer-Encoding: chunked\r\nZ-Last: 1\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[tuple[str, list[bytes]]]:
    """An upstream that records each connection's bytes and answers ODD_RESPONSE once a
    request head (and its Content-Length body) is complete."""
    path = str(tmp_path / "up.sock")
    seen: list[bytes] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += self.request.recv(65536)
            head, _, body = buf.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length:
                body += self.request.recv(65536)
            seen.append(head + b"\r\n\r\n" + body)
            self.request.sendall(ODD_RESPONSE)

    server = socketserver.ThreadingUnixStreamServer(path, Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"unix://{path}", seen
    server.shutdown()
    server.server_close()


def ask(sock_path: str, raw: bytes) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock_path)
    s.sendall(raw)
    got = b""
    while not got.endswith(b"0\r\n\r\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    return got


ODD_REQUEST = (
    b"POST /v1.41/containers/create?name=odd&x=%20y HTTP/1.1\r\nhost: docker\r\n"
    b"X-Mixed-CASE: Value  with  spaces\r\ncontent-type: application/json\r\n"
    b"User-Agent: odd/1.0\r\nContent-Length: 40\r\n\r\n"
    b'{"Image": "busybox",   "Z": 1.50, "A":1}'
)


# Intercepted by an adapter that reads the body and changes nothing: still as received.
LOOKING = 'endpoints: {"POST /containers/create": {pre: [look]}}\nadapters: {look: {use: policy}}\n'


@pytest.mark.parametrize("config", [None, LOOKING], ids=["unmatched", "intercepted-unchanged"])
def test_request_and_response_pass_byte_for_byte(
    recorder: tuple[str, list[bytes]], tmp_path: Path, config: str | None
) -> None:
    upstream, seen = recorder
    ps = start_plugstrip(upstream, tmp_path / "ps", config=config)
    try:
        assert ask(ps.socket, ODD_REQUEST) == ODD_RESPONSE
        assert seen == [ODD_REQUEST]
    finally:
        ps.stop()


def test_pre_hook_rewrites_method_path_query_and_headers(
    recorder: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    upstream, seen = recorder
    ps = start_plugstrip(
        upstream,
        tmp_path / "ps",
        config=(
            'endpoints: {"POST /containers/create": {pre: [move]}}\n'
            'adapters: {move: {python: "tests.sample_adapters:Reroute"}}\n'
        ),
    )
    try:
        ask(ps.socket, ODD_REQUEST)
        (got,) = seen
        head, _, body = got.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"PUT /v1.41/elsewhere?moved=1 HTTP/1.1"
        assert b"X-Rerouted: yes" in lines and b"X-Mixed-CASE: Value  with  spaces" in lines
        assert body == ODD_REQUEST.partition(b"\r\n\r\n")[2]
    finally:
        ps.stop()
