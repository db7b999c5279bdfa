"""The built-in adapters through the test kit, as an adapter author would test theirs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

from plugstrip.adapters.audit import AuditAdapter
from plugstrip.adapters.policy import PolicyAdapter
from plugstrip.proxy.contract import Call, Peer, Refuse
from plugstrip.proxy.testkit import FakeDaemon, make_call, respond, run_hook


async def refused(adapter: object, method: str, target: str, body: object = None) -> str | None:
    call = make_call(method, target, json=body)
    try:
        await run_hook(adapter, "pre_hook", call)
    except Refuse as refusal:
        assert refusal.status == 403
        return refusal.message
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


def _owned(who: str) -> dict[str, Any]:
    return {
        "Labels": {"io.plugstrip.owner": who},
        "Config": {"Labels": {"io.plugstrip.owner": who}},
    }


async def test_ownership_stamps_filters_and_hides() -> None:
    alice = Peer("unix", uid=1001, gid=1001, pid=7)
    policy = PolicyAdapter(ownership=True, bind_mounts=[])
    policy.bind_daemon(
        FakeDaemon(
            {
                "/containers/mine/json": _owned("uid:1001"),
                "/containers/theirs/json": _owned("uid:1002"),
                "/networks/theirnet": {"Name": "theirnet", **_owned("uid:1002")},
                "/networks/bridge": {"Name": "bridge", "Labels": {}},
                "/exec/e1/json": {"ContainerID": "theirs"},
                "/volumes/v": _owned("uid:1002"),
            }
        )
    )

    async def outcome(method: str, target: str, body: Any = None) -> tuple[int, str] | Call:
        call = make_call(method, target, json=body, peer=alice)
        try:
            await run_hook(policy, "pre_hook", call)
        except Refuse as refusal:
            return refusal.status, refusal.message
        return call

    created = await outcome(
        "POST",
        "/v1.41/containers/create",
        {"Image": "x", "labels": {"io.plugstrip.owner": "uid:0", "keep": "1"}},
    )
    assert isinstance(created, Call)
    assert created.request.json()["Labels"] == {"io.plugstrip.owner": "uid:1001", "keep": "1"}
    vol = await outcome("POST", "/volumes/create")
    assert isinstance(vol, Call) and vol.request.json() == {
        "Labels": {"io.plugstrip.owner": "uid:1001"}
    }

    listed = await outcome("GET", '/containers/json?all=1&filters={"status":["exited"]}')
    assert isinstance(listed, Call)
    query = dict(parse_qsl(listed.request.query))
    assert json.loads(query["filters"]) == {
        "status": ["exited"],
        "label": ["io.plugstrip.owner=uid:1001"],
    }
    assert query["all"] == "1"
    legacy = await outcome("POST", '/v1.41/containers/prune?filters={"label":{"a=b":true}}')
    assert isinstance(legacy, Call)
    assert json.loads(dict(parse_qsl(legacy.request.query))["filters"])["label"] == {
        "a=b": True,
        "io.plugstrip.owner=uid:1001": True,
    }

    assert isinstance(await outcome("POST", "/containers/mine/start"), Call)
    assert await outcome("POST", "/containers/theirs/start") == (404, "No such container: theirs")
    assert await outcome("GET", "/networks/theirnet") == (404, "network theirnet not found")
    assert isinstance(
        await outcome("POST", "/networks/bridge/connect", {"Container": "mine"}), Call
    )
    assert await outcome("POST", "/networks/bridge/connect", {"container": "theirs"}) == (
        404,
        "No such container: theirs",
    )
    assert await outcome("POST", "/exec/e1/start", {}) == (404, "No such exec instance: e1")
    assert await outcome("DELETE", "/volumes/v") == (404, "get v: no such volume")
    assert await outcome("POST", "/commit?container=theirs") == (404, "No such container: theirs")
    assert await outcome(
        "POST", "/containers/create", {"Image": "x", "HostConfig": {"VolumesFrom": ["theirs:ro"]}}
    ) == (400, "No such container: theirs")
    assert await outcome(
        "POST",
        "/containers/create",
        {"Image": "x", "NetworkingConfig": {"EndpointsConfig": {"theirnet": {}}}},
    ) == (404, "network theirnet not found")


async def test_policy_routes_to_the_same_powers() -> None:
    policy = PolicyAdapter(bind_mounts=["/srv"])
    policy.bind_daemon(FakeDaemon())
    cases = [
        ("POST", "/build?networkmode=host", None, "networkmode=host"),
        ("POST", "/build?networkmode=container:x", None, "networkmode=container:x"),
        ("POST", "/swarm/init", {}, "managing the swarm"),
        ("POST", "/plugins/pull?remote=x", [], "installing or changing plugins"),
        ("POST", "/services/create", {}, "creating or updating services"),
        ("POST", "/containers/x/update", {"devices": [{"PathOnHost": "/dev/sda"}]}, "Devices"),
        (
            "POST",
            "/containers/create",
            {"HostConfig": {"CgroupParent": "/"}},
            "CgroupParent / is not allowed",
        ),
        ("POST", "/containers/create", {"HostConfig": {"MaskedPaths": []}}, "MaskedPaths"),
        (
            "POST",
            "/containers/create",
            {"HostConfig": {"SecurityOpt": ["label=type:spc_t"]}},
            "SecurityOpt",
        ),
        (
            "POST",
            "/containers/create",
            {"HostConfig": {"SecurityOpt": ["seccomp={}"]}},
            "SecurityOpt",
        ),
        (
            "POST",
            "/containers/create",
            {"HostConfig": {"DeviceRequests": [{"Count": -1}]}},
            "DeviceRequests",
        ),
    ]
    for method, target, body, why in cases:
        message = await refused(policy, method, target, body)
        assert message is not None and why in message, (target, body, message)
    ok = [
        ("POST", "/build?networkmode=bridge", None),
        ("POST", "/containers/create", {"HostConfig": {"SecurityOpt": ["no-new-privileges"]}}),
        ("POST", "/containers/create", {"HostConfig": {"CapAdd": ["chown", "CAP_KILL"]}}),
        ("GET", "/containers/x/logs", None),
    ]
    for method, target, body in ok:
        assert await refused(policy, method, target, body) is None, (target, body)
    services = PolicyAdapter(services=True, bind_mounts=[])
    spec = {
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "x",
                "Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/x"}],
            }
        }
    }
    assert "bind mount of /etc" in (await refused(services, "POST", "/services/create", spec) or "")
    host_net = {"TaskTemplate": {"ContainerSpec": {"Image": "x"}, "Networks": [{"Target": "host"}]}}
    assert "host network" in (await refused(services, "POST", "/services/x/update", host_net) or "")
    assert (
        await refused(
            PolicyAdapter(), "POST", "/containers/create", {"HostConfig": {"Privileged": True}}
        )
        is None
    )  # an empty rule set allows everything


def test_policy_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown option"):
        PolicyAdapter(privilegd=False)
    with pytest.raises(ValueError, match="ownership needs a rule set"):
        PolicyAdapter(ownership=True)
    with pytest.raises(ValueError, match=r"clients\[0\].match: unknown key"):
        PolicyAdapter(clients=[{"match": {"ip": "10.0.0.1"}, "rules": {}}])
    with pytest.raises(ValueError, match="bind_mounts: expected a list of strings"):
        PolicyAdapter(bind_mounts="/srv")
    with pytest.raises(ValueError, match="privileged: expected true or false"):
        PolicyAdapter(privileged="no")
    with pytest.raises(ValueError, match="either clients or one rule set"):
        PolicyAdapter(clients=[], read_only=True)
