"""A kit for adapter authors: build calls and run hooks, no Docker or proxy needed.

::

    from plugstrip.proxy.testkit import make_call, run_chain

    call = make_call("POST", "/v1.41/containers/create", json={"Image": "busybox"})
    record = await run_chain(call, [MyAdapter()], policy=HookPolicy(timeout=1.0))
    assert call.request.json()["Labels"] == {...}
    assert record.status is None  # not refused; record.steps has each hook's changes

``run_chain`` runs hooks through the real pipeline (deadlines, the failure policy, the
trace); ``run_hook`` calls one hook bare. ``FakeDaemon`` answers an adapter's lookups
(``bind_daemon``) from a dict.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

from plugstrip.proxy.adapter_model import BuiltIn, HookPolicy, LoadedAdapter
from plugstrip.proxy.canonical import canonical_path
from plugstrip.proxy.config import Config
from plugstrip.proxy.contract import Call, Headers, HttpRequest, HttpResponse, Peer, Refuse, dumps
from plugstrip.proxy.docker_types import body_schema
from plugstrip.proxy.metrics import Metrics
from plugstrip.proxy.pipeline import Hook, Pipeline
from plugstrip.proxy.registry import Registry
from plugstrip.proxy.routes import Route
from plugstrip.proxy.trace import Record


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


FAIL_CLOSED = HookPolicy()  # the default: 10 s, a failure refuses the call


async def run_chain(
    call: Call,
    adapters: Sequence[object],
    hook: Hook = "pre_hook",
    policy: HookPolicy = FAIL_CLOSED,
) -> Record:
    """Run ``hook`` of each adapter, in order, as the pipeline runs a chain: under
    ``policy`` (its deadline; a failure refuses the call or skips the adapter, undoing its
    changes), each step traced with what it changed. A refusal ends the chain as it ends
    a call: ``record.status`` is its status and the last step says why."""
    every = [LoadedAdapter(f"{type(a).__name__}#{i}", a, policy) for i, a in enumerate(adapters)]
    builtins = [BuiltIn((Route.parse("* /**"),), loaded) for loaded in every]
    pipeline = Pipeline(Config(), Registry(()), Metrics(), builtins)
    request = call.client_request
    chain = pipeline.match(request.method, request.path)
    assert chain is not None
    record = Record(
        time.time(), request.method, request.target, chain.endpoint, call.peer.describe()
    )
    try:
        await pipeline.run(hook, chain, call, record)
    except Refuse as refusal:
        record.status = refusal.status
    return record


class FakeDaemon:
    """The daemon's answers to an adapter's lookups: JSON objects and raw bytes by path
    (``/containers/ID/json``, ...); an unknown path is absent, as a 404 is."""

    def __init__(
        self, objects: dict[str, Any] | None = None, raw: dict[str, bytes] | None = None
    ) -> None:
        self.objects = objects or {}
        self.raw_objects = raw or {}

    async def call(self, method: str, path: str, ok_missing: bool = False) -> Any:
        return self.objects.get(path)

    async def raw(self, path: str) -> bytes | None:
        return self.raw_objects.get(path)
