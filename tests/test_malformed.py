"""Malformed HTTP is rejected, never crashes or hangs the proxy, and the next client is fine."""

from __future__ import annotations

import socket

import pytest

from tests.harness import Plugstrip, docker


def exchange(sock_path: str, data: bytes, timeout: float = 10) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock_path)
    try:
        s.sendall(data)
    except BrokenPipeError:
        pass
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    s.close()
    return got


INTERCEPT = """
endpoints:
  "POST /containers/create": {pre: [tag]}
adapters:
  tag: {python: "tests.sample_adapters:Tagger"}
"""


@pytest.fixture(params=["pass-through", "intercepted"])
def target(request: pytest.FixtureRequest, plugstrip_factory: object) -> Plugstrip:
    config = INTERCEPT if request.param == "intercepted" else None
    return plugstrip_factory(config)  # type: ignore[operator,no-any-return]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (
            b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"400",
        ),
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /_ping HTTP/1.1\r\nHost: d\r\nX-Big: " + b"a" * (2 << 20) + b"\r\n\r\n", b"431"),
        (
            b"GET /_ping HTTP/1.1\r\nHost: d\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"400",
        ),
        (b"GET /_ping HTTP/1.1\r\nHo st: d\r\n\r\n", b"400"),
    ],
    ids=["cl-and-te", "garbage", "huge-headers", "two-lengths", "bad-header-name"],
)
def test_rejected_with_a_status(target: Plugstrip, raw: bytes, status: bytes) -> None:
    reply = exchange(target.socket, raw)
    assert reply.split(b" ")[1] == status, reply[:200]
    assert b'{"message":' in reply
    assert docker(target.host, "version").returncode == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{}",  # then the client goes away
        b"POST /build HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nabc",  # truncated mid-chunk
    ],
    ids=["bad-chunk", "short-body", "truncated-stream"],
)
def test_broken_bodies_end_the_connection_cleanly(target: Plugstrip, raw: bytes) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(target.socket)
    s.sendall(raw)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := s.recv(65536):  # must end (no hang): a 400 or a plain close
        reply += chunk
    s.close()
    assert reply == b"" or reply.split(b" ")[1] in (b"400", b"500", b"502"), reply[:200]
    assert docker(target.host, "version").returncode == 0
    assert b"bug:" not in target.log.read_bytes()
