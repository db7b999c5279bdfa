"""A small kit for adapter authors: build calls and run hooks, no Docker or proxy needed.

::

    from plugstrip.proxy.testkit import make_call, run_hook

    call = make_call("POST", "/v1.41/containers/create", json={"Image": "busybox"})
    await run_hook(MyAdapter(), "pre_hook", call)
    assert call.request.json()["Labels"] == {...}
"""

from __future__ import annotations

import inspect
from typing import Any

from plugstrip.proxy.canonical import canonical_path
from plugstrip.proxy.contract import Call, Headers, HttpRequest, HttpResponse, Peer, dumps
from plugstrip.proxy.docker_types import body_schema


def make_call(
    method: str,
    target: str,
    json: Any = None,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    peer: Peer | None = None,
) -> Call:
    if json is not None:
        body = dumps(json)
    hdrs = Headers(headers or [("Host", "docker")])
    if body is not None:
        hdrs.set("Content-Type", "application/json")
        hdrs.set("Content-Length", str(len(body)))
    raw_path, _, query = target.partition("?")
    path = canonical_path(raw_path)  # as the proxy reads requests
    request = HttpRequest(
        method, path, query, hdrs, body, body_schema(method, path), raw_path=raw_path
    )
    return Call(request.snapshot(), request, peer or Peer("unix", uid=0, pid=1, gid=0), target)


def respond(call: Call, status: int, json: Any = None, streaming: bool = False) -> Call:
    """Give ``call`` the daemon's response, as a post-hook would see it."""
    body = None if streaming else (dumps(json) if json is not None else b"")
    headers = Headers([("Content-Type", "application/json")])
    call.response = HttpResponse(status, headers, body, streaming)
    call.status = status
    return call


async def run_hook(adapter: object, hook: str, call: Call) -> None:
    """Run one hook the way the pipeline does (awaiting it if it is a coroutine)."""
    result = getattr(adapter, hook)(call)
    if inspect.isawaitable(result):
        await result
    if hook == "pre_hook":
        call.request.settle()
    elif call.response is not None:
        call.response.settle()
