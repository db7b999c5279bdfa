"""The hook pipeline on its own: chains, order, failure policies, finished, trace."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from plugstrip.proxy.adapter_manager import AdapterManager
from plugstrip.proxy.config import parse
from plugstrip.proxy.contract import Call, Refuse
from plugstrip.proxy.testkit import make_call, respond
from plugstrip.proxy.trace import Trace

RAN: list[str] = []


class Mark:
    def __init__(self, tag: str = "x") -> None:
        self.tag = tag

    def pre_hook(self, call: Call) -> None:
        RAN.append(f"pre:{self.tag}")
        call.request.json()["Labels"] = {**call.request.json().get("Labels", {}), self.tag: "1"}

    async def post_hook(self, call: Call) -> None:
        RAN.append(f"post:{self.tag}")

    def finished(self, call: Call) -> None:
        RAN.append(f"finished:{self.tag}")


class Explodes:
    def pre_hook(self, call: Call) -> None:
        call.request.json()["Image"] = "changed-before-failing"
        raise ValueError("boom")

    def finished(self, call: Call) -> None:
        raise RuntimeError("finished hooks must never reach the client")


class Slow:
    async def pre_hook(self, call: Call) -> None:
        await asyncio.sleep(5)


class No:
    def pre_hook(self, call: Call) -> None:
        raise Refuse(409, "no")


def pipeline(text: str) -> Any:
    return AdapterManager().build(parse(text)).pipeline


ADAPTERS = """
adapters:
  a: {python: "tests.test_pipeline:Mark", options: {tag: a}}
  b: {python: "tests.test_pipeline:Mark", options: {tag: b}}
  boom: {python: "tests.test_pipeline:Explodes", on_failure: skip}
  boom_closed: {python: "tests.test_pipeline:Explodes"}
  slow: {python: "tests.test_pipeline:Slow", timeout: 0.1}
  refuser: {python: "tests.test_pipeline:No"}
"""


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


def create_call() -> Call:
    return make_call("POST", "/v1.41/containers/create", json={"Image": "busybox"})


async def test_chains_from_every_matching_endpoint_in_file_order_each_adapter_once() -> None:
    p = pipeline(
        'endpoints:\n  "* /**": {pre: [a], post: [a]}\n'
        '  "POST /containers/create": {pre: [b, a], post: [b]}\n' + ADAPTERS
    )
    chain = p.match("POST", "/v1.41/containers/create")
    assert [x.name for x in chain.pre] == ["a", "b"] and [x.name for x in chain.post] == ["a", "b"]
    assert p.match("GET", "/_ping").endpoint == "* /**"
    call = create_call()
    record = Trace().start("POST", "/x", chain.endpoint, "test")
    await p.run("pre_hook", chain, call, record)
    respond(call, 201, json={"Id": "1"})
    await p.run("post_hook", chain, call, record)
    await p.finish(chain, call)
    assert RAN == ["pre:a", "pre:b", "post:a", "post:b", "finished:a", "finished:b"]
    call.request.settle()
    assert call.request.json()["Labels"] == {"a": "1", "b": "1"}
    pre_a = record.steps[0]
    assert (pre_a.adapter, pre_a.hook, pre_a.outcome) == ("a", "pre_hook", "ok")
    assert any('"a": "1"' in c for c in pre_a.changes)


async def test_skip_undoes_a_failing_adapter_and_the_chain_goes_on() -> None:
    p = pipeline('endpoints:\n  "POST /containers/create": {pre: [boom, a]}\n' + ADAPTERS)
    chain = p.match("POST", "/containers/create")
    call = create_call()
    record = Trace().start("POST", "/x", chain.endpoint, "test")
    await p.run("pre_hook", chain, call, record)
    call.request.settle()
    assert call.request.json() == {"Image": "busybox", "Labels": {"a": "1"}}
    assert record.steps[0].outcome == "failed (skip): ValueError: boom"
    await p.finish(chain, call)  # Explodes.finished raises: logged, not raised


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("boom_closed", 500, "adapter 'boom_closed' pre-hook failed: ValueError: boom"),
        ("slow", 504, "adapter 'slow' pre-hook failed: timed out after 0.1s"),
        ("refuser", 409, "no"),
    ],
)
async def test_failures_and_refusals_end_the_call(name: str, status: int, message: str) -> None:
    p = pipeline(f'endpoints:\n  "POST /containers/create": {{pre: [{name}, a]}}\n' + ADAPTERS)
    chain = p.match("POST", "/containers/create")
    record = Trace().start("POST", "/x", chain.endpoint, "test")
    with pytest.raises(Refuse) as info:
        await p.run("pre_hook", chain, create_call(), record)
    assert info.value.status == status and message in info.value.message
    assert RAN == []  # nothing after it ran


class Answers:
    def pre_hook(self, call: Call) -> None:
        call.respond(200, {"answered": True})


async def test_respond_ends_the_pre_hook_chain() -> None:
    p = pipeline(
        'endpoints:\n  "GET /x": {pre: [ans, a]}\n'
        + ADAPTERS
        + '  ans: {python: "tests.test_pipeline:Answers"}\n'
    )
    chain = p.match("GET", "/x")
    call = make_call("GET", "/x")
    await p.run("pre_hook", chain, call, Trace().start("GET", "/x", chain.endpoint, "t"))
    assert call.response is not None and call.response.json() == {"answered": True}
    assert RAN == []  # "a" did not run
