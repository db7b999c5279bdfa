"""The byte path between a client and the daemon, scripted (tests/playbook.py): what
plugstrip passes on either way, and its decisions (keep the client's connection or close
it, reuse the daemon's or open another), for every framing HTTP/1.1 has."""

from __future__ import annotations

import asyncio

import pytest

from plugstrip.proxy.contract import Call
from plugstrip.proxy.relay_plan import RelayPlan
from tests.playbook import Playbook, builtin

PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"


async def test_keep_alive_reuses_both_connections() -> None:
    async with Playbook() as pb:
        for _ in range(2):
            await pb.passes(PING, OK)
        await pb.client_kept()
        assert pb.upstream.opened == 1


async def test_head_204_and_304_have_no_body_whatever_their_headers() -> None:
    head = b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
    answers = [
        (head, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
        (PING, b"HTTP/1.1 204 No Content\r\n\r\n"),
        (PING, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
    ]
    async with Playbook() as pb:
        for request, answer in [*answers, (PING, OK)]:  # then an ordinary one, in step
            await pb.passes(request, answer)
        await pb.client_kept()
        assert pb.upstream.opened == 1


async def test_chunked_bodies_pass_as_framed_both_ways() -> None:
    request = (
        b"POST /build HTTP/1.1\r\nHost: docker\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'
    )
    async with Playbook() as pb:
        await pb.passes(request, answer)
        await pb.client_kept()


CLOSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nOK"


@pytest.mark.parametrize(
    ("request_bytes", "answer"),
    [
        # the client asks to close: the request goes as it is, the daemon frames for it
        (b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n", CLOSE),
        (PING, CLOSE),  # the daemon closes of itself
        (PING, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"),  # to EOF
    ],
    ids=["client-asks", "daemon-closes", "http-1.0-to-eof"],
)
async def test_an_answer_the_daemon_closes_after_closes_the_client_after_it(
    request_bytes: bytes, answer: bytes
) -> None:
    async with Playbook() as pb:
        await pb.to_daemon(request_bytes)
        await pb.daemon_sends(answer)
        await pb.daemon_closes()
        await pb.client_expects(answer)
        await pb.client_closed()


async def test_an_upgrade_becomes_a_raw_pipe_both_ways() -> None:
    request = (
        b"POST /containers/c1/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: docker\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    )
    switched = (
        b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    )
    async with Playbook() as pb:
        await pb.to_daemon(request)
        await pb.to_client(switched)
        assert pb.plan == RelayPlan(pipe=True, keep_alive=False)
        await pb.to_daemon(b"ls\n")
        await pb.to_client(b"\x01\x00\x00\x00\x00\x00\x00\x04bin\n")
        await pb.daemon_closes()
        await pb.client_closed()


async def test_an_old_style_hijack_without_101_is_a_raw_pipe_too() -> None:
    request = b"POST /containers/c1/attach?stream=1&stdout=1 HTTP/1.1\r\nHost: docker\r\n\r\n"
    hijacked = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n"
    async with Playbook() as pb:
        await pb.to_daemon(request)
        await pb.to_client(hijacked + b"out")
        assert pb.plan == RelayPlan(pipe=True, legacy=True, keep_alive=False)
        await pb.to_daemon(b"in")
        await pb.daemon_closes()
        await pb.client_closed()


async def test_expect_100_continue_is_the_daemons_to_answer() -> None:
    head = (
        b"POST /containers/c1/archive?path=/ HTTP/1.1\r\nHost: docker\r\n"
        b"Content-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    async with Playbook() as pb:
        await pb.to_daemon(head)
        await pb.to_client(b"HTTP/1.1 100 Continue\r\n\r\n")
        await pb.to_daemon(b"data")
        await pb.to_client(OK)
        await pb.client_kept()


async def test_a_final_answer_instead_of_100_continue_closes_the_unread_body() -> None:
    head = (
        b"PUT /containers/c1/archive?path=/ HTTP/1.1\r\nHost: docker\r\n"
        b"Content-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    refusal = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    async with Playbook() as pb:
        await pb.to_daemon(head)
        await pb.daemon_sends(refusal)
        await pb.client_expects(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await pb.client_closed()


class Labels:
    """A post-hook that rewrites an answer: plugstrip then frames it itself."""

    async def pre_hook(self, call: Call) -> None:
        pass

    async def post_hook(self, call: Call) -> None:
        if call.response is not None and call.response.body is not None:
            call.response.set_json({"rewritten": True})


async def test_hooks_hold_a_body_and_plugstrip_sends_100_continue_itself() -> None:
    head = (
        b"POST /containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json"
        b"\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    async with Playbook([builtin(Labels())]) as pb:
        await pb.client_sends(head)
        await pb.client_expects(b"HTTP/1.1 100 Continue\r\n\r\n")  # its body is held
        await pb.client_sends(b"{}")
        await pb.daemon_expects(head + b"{}")
        assert pb.plan is None  # nothing decided before the answer's head
        await pb.daemon_sends(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
            b'Content-Length: 11\r\n\r\n{"Id":"c1"}'
        )
        await pb.client_expects(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
            b'Content-Length: 18\r\n\r\n{"rewritten":true}'
        )
        assert pb.plan == RelayPlan(hold=True)
        await pb.client_kept()


async def test_a_daemon_closing_before_it_answers_ends_the_client_connection() -> None:
    async with Playbook() as pb:
        await pb.to_daemon(PING)
        await pb.daemon_closes()
        await pb.client_closed()


async def test_a_daemon_gone_between_calls_is_dialled_again() -> None:
    async with Playbook() as pb:
        await pb.passes(PING, OK)
        await pb.daemon_closes()  # idle keep-alive connection dropped by the daemon
        await asyncio.sleep(0.05)  # and seen to be: a request racing the close is lost
        await pb.client_sends(PING)
        await pb.daemon_expects(PING, new=True)
        await pb.daemon_sends(OK)
        await pb.client_expects(OK)  # on the daemon's new connection
        assert pb.upstream.opened == 2


# ---- uploads: a body no adapter reads is relayed as the client framed it ---------------

UPLOAD = b"PUT /containers/c1/archive?path=/ HTTP/1.1\r\nHost: docker\r\n"


async def test_a_chunked_upload_passes_as_framed_then_the_next_request_in_the_same_read() -> None:
    body = b"4;name=value\r\nwxyz\r\n" + b"8000\r\n" + b"t" * 0x8000 + b"\r\n0\r\nX-Sum: 1\r\n\r\n"
    request = UPLOAD + b"Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with Playbook() as pb:
        await pb.client_sends(request + body + PING)
        await pb.daemon_expects(request + body)
        await pb.to_client(OK)
        await pb.daemon_expects(PING)  # the next request, on the same connection
        await pb.to_client(OK)
        await pb.client_kept()
        assert pb.upstream.opened == 1


async def test_an_upload_of_known_length_is_spliced_to_its_last_byte() -> None:
    body = bytes(range(256)) * (3 << 12)  # 3 MiB, sent in pieces
    request = UPLOAD + b"Content-Type: application/x-tar\r\nContent-Length: %d\r\n\r\n" % len(body)

    async def send() -> None:
        await pb.client_sends(request + body[:1000])
        for at in range(1000, len(body), 1 << 20):
            await pb.client_sends(body[at : at + (1 << 20)])
        await pb.client_sends(PING)

    async with Playbook() as pb:
        sending = asyncio.create_task(send())  # more than the sockets hold: read meanwhile
        await pb.daemon_expects(request + body)
        await sending
        await pb.to_client(OK)
        await pb.daemon_expects(PING)
        await pb.to_client(OK)
        await pb.client_kept()


async def test_an_upload_with_framing_go_reads_otherwise_ends_both_connections() -> None:
    request = UPLOAD + b"Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with Playbook() as pb:
        await pb.client_sends(request + b"3\nabc\r\n0\r\n\r\n" + PING)
        await pb.daemon_expects(request)
        await pb.upstream_closed()  # none of the body, nor the request hidden after it
        await pb.client_closed()


async def test_a_client_gone_in_the_middle_of_an_upload_ends_the_call() -> None:
    request = UPLOAD + b"Content-Type: application/x-tar\r\nContent-Length: 100\r\n\r\n"
    async with Playbook() as pb:
        await pb.to_daemon(request + b"part")
        await pb.client_hangs_up()
        await pb.upstream_closed()


async def test_the_daemon_may_answer_an_upload_before_reading_it() -> None:
    request = UPLOAD + b"Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
    refusal = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    async with Playbook() as pb:
        await pb.to_daemon(request + b"3\r\nabc\r\n")
        await pb.daemon_sends(refusal)  # while the body still comes
        await pb.to_daemon(b"3\r\ndef\r\n0\r\n\r\n")
        await pb.client_expects(refusal)
        await pb.passes(PING, OK)  # the body ended where it said: the connection goes on
        await pb.client_kept()
