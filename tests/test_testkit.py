"""The adapter authors' kit runs hooks through the real pipeline: deadlines, the failure
policy and the trace behave as they do in plugstrip serve."""

from __future__ import annotations

import asyncio

from plugstrip.proxy.adapter_model import HookPolicy
from plugstrip.proxy.contract import Call, Refuse
from plugstrip.proxy.testkit import FakeDaemon, make_call, respond, run_chain


class Labeller:
    async def pre_hook(self, call: Call) -> None:
        call.request.json().setdefault("Labels", {})["team"] = "blue"

    def post_hook(self, call: Call) -> None:
        assert call.response is not None
        call.response.json()["Warnings"] = ["seen"]


class Slow:
    async def pre_hook(self, call: Call) -> None:
        call.request.json()["Image"] = "changed-before-the-deadline"
        await asyncio.sleep(5)


class NoLatest:
    def pre_hook(self, call: Call) -> None:
        if call.request.json().get("Image", "").endswith(":latest"):
            raise Refuse(403, "pin a tag")


def create(image: str) -> Call:
    return make_call("POST", "/v1.41/containers/create?name=x", json={"Image": image})


async def test_changes_are_applied_in_order_and_traced() -> None:
    call = create("busybox:1")
    record = await run_chain(call, [Labeller(), NoLatest()])
    assert record.status is None
    assert call.request.json() == {"Image": "busybox:1", "Labels": {"team": "blue"}}
    assert [s.adapter for s in record.steps] == ["Labeller#0", "NoLatest#1"]
    assert record.steps[0].changes and "team" in record.steps[0].changes[0]
    assert record.steps[1].changes == []
    assert record.target == "/v1.41/containers/create?name=x"


async def test_a_refusal_ends_the_chain_with_its_status() -> None:
    call = create("busybox:latest")
    record = await run_chain(call, [NoLatest(), Labeller()])
    assert record.status == 403
    assert [s.outcome for s in record.steps] == ["refused 403: pin a tag"]
    assert "Labels" not in call.request.json()  # the adapter after it never ran


async def test_a_deadline_refuses_fail_closed_or_skips_and_undoes() -> None:
    closed = create("busybox:1")
    record = await run_chain(closed, [Slow()], policy=HookPolicy(timeout=0.1))
    assert record.status == 504
    assert "timed out after 0.1s" in record.steps[0].outcome

    skipped = create("busybox:1")
    record = await run_chain(skipped, [Slow(), Labeller()], policy=HookPolicy(0.1, "skip"))
    assert record.status is None
    assert record.steps[0].outcome.startswith("failed (skip)")
    # the slow adapter's change is undone; the next adapter still ran
    assert skipped.request.json() == {"Image": "busybox:1", "Labels": {"team": "blue"}}


async def test_post_hooks_see_the_daemons_answer() -> None:
    call = respond(create("busybox:1"), 201, json={"Id": "abc", "Warnings": []})
    record = await run_chain(call, [Labeller()], hook="post_hook")
    assert call.response is not None and call.response.json()["Warnings"] == ["seen"]
    assert record.steps[0].hook == "post_hook"


async def test_fake_daemon_answers_by_path_and_absent_otherwise() -> None:
    daemon = FakeDaemon({"/containers/c1/json": {"Id": "c1"}}, raw={"/x": b"bytes"})
    assert await daemon.call("GET", "/containers/c1/json") == {"Id": "c1"}
    assert await daemon.call("GET", "/containers/c2/json", ok_missing=True) is None
    assert await daemon.raw("/x") == b"bytes" and await daemon.raw("/y") is None
