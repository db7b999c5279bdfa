"""How one answer is relayed, decided from the request and the answer's head alone.

A pure function of what was parsed, so each case of HTTP/1.1 and of Docker's hijacks is
a row of a table test (tests/test_relay_plan.py), and the connection only carries it out.
"""

from __future__ import annotations

from dataclasses import dataclass

from plugstrip.proxy.contract import HttpRequest
from plugstrip.proxy.http1 import Head
from plugstrip.proxy.streams import RAW_STREAM_TYPES, is_json_stream


@dataclass(frozen=True)
class RelayPlan:
    # The connection becomes a raw pipe both ways after this head: a 101, or (``legacy``)
    # Docker's old hijack, a 200 raw stream with no framing.
    pipe: bool = False
    legacy: bool = False
    # The body is read (up to the held limit) for post-hooks to see and change; else it
    # streams past them, as framed.
    hold: bool = False
    # The daemon keeps its connection open after this answer, so the client's may carry
    # another request: plugstrip follows the daemon.
    keep_alive: bool = True


def relay_plan(
    request: HttpRequest, head: Head, content_type: str, post_hooks: bool, hijackable: bool
) -> RelayPlan:
    """The plan for answer ``head`` (of type ``content_type``) to ``request``, with or
    without post-hooks to run on it; ``hijackable``: the request may take the connection
    over (``streams.may_hijack``, asked once by the connection as the request went)."""
    legacy = (
        head.status == 200
        and hijackable
        and content_type in RAW_STREAM_TYPES
        and head.length is None
        and not head.chunked
    )
    pipe = head.status == 101 or legacy
    hold = (
        post_hooks
        and not pipe
        and request.method != "HEAD"
        and "json" in content_type
        and not is_json_stream(request.method, request.path, request.query)
    )
    return RelayPlan(pipe, legacy, hold, head.keep_alive and not pipe)
