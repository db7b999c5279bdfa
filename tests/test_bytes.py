"""Byte-for-byte transparency, checked against a recording upstream (a real unix socket
peer that records what arrives and answers with odd but valid HTTP). It is no Docker
daemon, so the network adapter (which follows the daemon's events) is off here."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import start_plugstrip

ODD_RESPONSE = (
    b"HTTP/1.1 200 Fine Thanks\r\nx-lower-case: kept\r\nContent-Type: text/plain\r\n"
    b"Transfer-Encoding: chunked\r\nZ-Last: 1\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


NO_NETWORKS = ["--no-networks"]


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[tuple[str, list[bytes], list[bytes]]]:
    """An upstream that records each connection's bytes and answers ODD_RESPONSE once a
    request head (and its Content-Length body) is complete."""
    path = str(tmp_path / "up.sock")
    seen: list[bytes] = []
    answer = [ODD_RESPONSE]  # a test may swap in another answer

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
            self.request.sendall(answer[0])

    server = socketserver.ThreadingUnixStreamServer(path, Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"unix://{path}", seen, answer
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
LOOKING = (
    'endpoints: {"POST /containers/create": {pre: [look]}}\n'
    "adapters: {look: {use: policy, options: {bind_mounts: null}}}\n"
)
# Read as the daemon reads it (an escaped route, keys in another case), checked, and sent
# on as it came: the canonical reading is for hooks, not for the wire.
ESCAPED_REQUEST = (
    b"POST /v1.41/containers/%63reate?name=odd HTTP/1.1\r\nHost: docker\r\n"
    b"Content-Type: application/json\r\nContent-Length: 50\r\n\r\n"
    b'{"image": "busybox", "hostconfig": {"memory": 0} }'
)


@pytest.mark.parametrize("config", [None, LOOKING], ids=["unmatched", "intercepted-unchanged"])
def test_request_and_response_pass_byte_for_byte(
    recorder: tuple[str, list[bytes], list[bytes]], tmp_path: Path, config: str | None
) -> None:
    upstream, seen, _ = recorder
    ps = start_plugstrip(upstream, tmp_path / "ps", config=config, extra=NO_NETWORKS)
    try:
        assert ask(ps.socket, ODD_REQUEST) == ODD_RESPONSE
        assert seen == [ODD_REQUEST]
    finally:
        ps.stop()


def test_a_request_read_canonically_is_sent_as_it_came(
    recorder: tuple[str, list[bytes], list[bytes]], tmp_path: Path
) -> None:
    upstream, seen, _ = recorder
    ps = start_plugstrip(upstream, tmp_path / "ps", config=LOOKING, extra=NO_NETWORKS)
    try:
        assert ask(ps.socket, ESCAPED_REQUEST) == ODD_RESPONSE
        assert seen == [ESCAPED_REQUEST]
        with urllib.request.urlopen(f"{ps.admin}/trace") as answer:
            (record,) = json.load(answer)
        assert record["endpoint"] == "POST /containers/create"  # the hook saw it
        assert record["target"] == "/v1.41/containers/create?name=odd"
    finally:
        ps.stop()


def test_pre_hook_rewrites_method_path_query_and_headers(
    recorder: tuple[str, list[bytes], list[bytes]], tmp_path: Path
) -> None:
    upstream, seen, _ = recorder
    ps = start_plugstrip(
        upstream,
        tmp_path / "ps",
        config=(
            'endpoints: {"POST /containers/create": {pre: [move]}}\n'
            'adapters: {move: {python: "tests.sample_adapters:Reroute"}}\n'
        ),
        extra=NO_NETWORKS,
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


CHUNKED_JSON = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'7\r\n{"Id": \r\n6\r\n"abc"}\r\n0\r\n\r\n'
)


def test_json_held_for_a_post_hook_and_left_alone_keeps_chunked_framing(
    recorder: tuple[str, list[bytes], list[bytes]], tmp_path: Path
) -> None:
    """A post-hook that only reads a chunked JSON answer: the client gets the daemon's head
    and a valid chunked body (the chunks re-cut, the bytes within the same)."""
    upstream, _, answer = recorder
    answer[0] = CHUNKED_JSON
    ps = start_plugstrip(
        upstream,
        tmp_path / "ps",
        config='endpoints: {"GET /containers/*/json": {post: [look]}}\n'
        'adapters: {look: {python: "tests.sample_adapters:Reader"}}\n',
        extra=NO_NETWORKS,
    )
    try:
        got = ask(ps.socket, b"GET /v1.41/containers/x/json HTTP/1.1\r\nHost: d\r\n\r\n")
        assert got == CHUNKED_JSON.partition(b"\r\n\r\n")[0] + (
            b'\r\n\r\nd\r\n{"Id": "abc"}\r\n0\r\n\r\n'
        )
    finally:
        ps.stop()
