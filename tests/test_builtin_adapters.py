"""The built-in adapters through the test kit, as an adapter author would test theirs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.audit import AuditAdapter
from adapters.contract import Refuse
from adapters.policy import PolicyAdapter
from adapters.testkit import make_call, respond, run_hook


async def refused(adapter: object, method: str, target: str, body: object = None) -> str | None:
    call = make_call(method, target, json=body)
    try:
        await run_hook(adapter, "pre_hook", call)
    except Refuse as refusal:
        assert refusal.status == 403
        return refusal.message
    return None


class FakeDaemon:
    """The daemon's answers the policy asks for: inspected objects by path."""

    def __init__(self, objects: dict[str, Any] | None = None) -> None:
        self.objects = objects or {}

    async def call(self, method: str, path: str, ok_missing: bool = False) -> Any:
        return self.objects.get(path)

    async def raw(self, path: str) -> bytes | None:
        return None


async def test_policy_container_rules() -> None:
    policy = PolicyAdapter(privileged=False, host_namespaces=False, bind_mounts=["/srv/data"])
    policy.bind_daemon(FakeDaemon())
    create = "/v1.41/containers/create"
    assert await refused(policy, "POST", create, {"Image": "x"}) is None
    cases = {
        "privileged containers": {"HostConfig": {"Privileged": True}},
        "UTSMode=host": {"HostConfig": {"UTSMode": "host"}},
        "bind mount of /srv/database": {"HostConfig": {"Binds": ["/srv/database:/d"]}},
        "bind mount of /etc": {
            "HostConfig": {"Mounts": [{"Type": "bind", "Source": "/srv/data/../../etc"}]}
        },
    }
    for why, body in cases.items():
        message = await refused(policy, "POST", create, {"Image": "x", **body})
        assert message is not None and why in message
    ok = {
        "HostConfig": {
            "Binds": ["/srv/data/sub:/d", "named-volume:/v"],
            "Mounts": [{"Type": "volume", "Source": "vol"}],
        }
    }
    assert await refused(policy, "POST", create, {"Image": "x", **ok}) is None
    exec_create = "/containers/abc/exec"
    assert "privileged" in (await refused(policy, "POST", exec_create, {"Privileged": True}) or "")


async def test_policy_allow_and_deny_lists_and_read_only() -> None:
    policy = PolicyAdapter(allow=["GET /**", "POST /containers/*/start"], deny=["GET /secrets/**"])
    assert await refused(policy, "GET", "/v1.41/containers/json") is None
    assert await refused(policy, "POST", "/containers/abc/start") is None
    assert "not in the allow-list" in (await refused(policy, "POST", "/containers/create") or "")
    assert "is denied" in (await refused(policy, "GET", "/secrets/x") or "")
    ro = PolicyAdapter(read_only=True)
    assert await refused(ro, "HEAD", "/_ping") is None
    assert "read-only" in (await refused(ro, "DELETE", "/containers/abc") or "")


@pytest.mark.parametrize(("status", "outcome"), [(201, "ok"), (403, "refused"), (500, "error")])
async def test_audit_line_per_mutating_call(tmp_path: Path, status: int, outcome: str) -> None:
    log = tmp_path / "audit.jsonl"
    audit = AuditAdapter(path=str(log))
    call = make_call(
        "POST",
        "/v1.41/containers/create?name=web",
        json={"Image": "busybox", "Env": ["SECRET=x"], "HostConfig": {"Privileged": True}},
    )
    await run_hook(audit, "pre_hook", call)
    respond(call, status, json={"Id": "abc"})
    audit.finished(call)
    get = make_call("GET", "/containers/json")
    get.status = 200
    audit.finished(get)
    audit.close()
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert (line["method"], line["request"], line["status"], line["outcome"]) == (
        "POST",
        "/v1.41/containers/create?name=web",
        status,
        outcome,
    )
    assert line["who"] == "unix:uid=0,gid=0,pid=1"
    assert line["create"] == {"Image": "busybox", "Privileged": True}  # never the Env
