"""Bodies generated from the Engine API's schema itself, the daemon as the oracle.

Hypothesis writes container create, update and exec bodies from the definitions of
proxy/engine_api.json (any field, values of its type, keys in any case and sometimes twice,
references to another client's objects by name, id and id prefix) and sends them through
plugstrip as client A (this process: uid 0, ownership on). Whatever passes is read back
on the daemon directly: no power the rules refuse in its inspect, nothing of client B's
reachable from it, no process that runs as uid 0 where root is refused (``id -u`` in it).
Lists and inspects A asks for must hold no byte of B's ids, names or addresses beyond
what A itself wrote in the request.

``PLUGSTRIP_PROPERTY_EXAMPLES`` sets the example count (bench/policy_soak.py runs many).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from plugstrip.proxy.docker_types import Type, definition
from tests import attack, harness
from tests.attack import baseline
from tests.harness import docker
from tests.test_policy_property import ALLOWED_ROOT, Obj, encode, spellings

EXAMPLES = int(os.environ.get("PLUGSTRIP_PROPERTY_EXAMPLES", "30"))
RUN = uuid.uuid4().hex[:6]
B_OWNER = "uid:1002"
B_CTR, B_VOL, B_NET = f"pb-ctr-{RUN}", f"pb-vol-{RUN}", f"pb-net-{RUN}"
A_TARGET = f"pa-target-{RUN}"
EXAMPLE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def world(dockerd: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """plugstrip with ownership for this process (A), B's objects made on the daemon with
    B's owner label, and A's own running container whose user is not root."""
    work = tmp_path_factory.mktemp("schema-property")
    config = f"""
endpoints:
  "* /**": {{pre: [policy], post: [policy]}}
adapters:
  policy:
    use: policy
    options:
      ownership: true
      clients:
        - match: {{uid: 0}}
          rules: {{bind_mounts: ["{ALLOWED_ROOT}"]}}
"""
    ps = harness.start_plugstrip(dockerd, work / "ps", config)
    label = ["--label", f"io.plugstrip.owner={B_OWNER}"]
    try:
        docker(dockerd, "network", "create", *label, B_NET)
        docker(dockerd, "volume", "create", *label, B_VOL)
        docker(
            dockerd,
            *("run", "-d", "--name", B_CTR, *label, "--network", B_NET, "-v", f"{B_VOL}:/d"),
            *("-e", f"SECRET=b-{RUN}", "busybox", "sleep", "600"),
        )
        a = f"unix://{ps.socket}"
        docker(
            a,
            "run",
            "-d",
            "--name",
            A_TARGET,
            "--user",
            "1000",
            "--network",
            "none",
            "busybox",
            "sleep",
            "600",
        )
        yield {
            "socket": ps.socket,
            "ctr": _id(dockerd, "container", B_CTR),
            "net": _id(dockerd, "network", B_NET),
        }
    finally:
        ps.stop()
        docker(dockerd, "rm", "-f", B_CTR, A_TARGET, check=False)
        docker(dockerd, "network", "rm", B_NET, check=False)
        docker(dockerd, "volume", "rm", "-f", B_VOL, check=False)


def _id(dockerd: str, kind: str, name: str) -> str:
    return docker(dockerd, kind, "inspect", "-f", "{{.Id}}", name).stdout.decode().strip()


# ---- bodies from the schema --------------------------------------------------------------


def b_refs(world: dict[str, str]) -> list[str]:
    """B's objects as the daemon resolves them: names, ids, id prefixes."""
    ctr, net = world["ctr"], world["net"]
    return [B_CTR, ctr, ctr[:12], B_VOL, B_NET, net, net[:12]]


def strings(world: dict[str, str]) -> st.SearchStrategy[str]:
    refs = b_refs(world)
    plain = [
        *("", "host", "none", "busybox", "/", "/etc", f"{ALLOWED_ROOT}/d", "/dev/sda"),
        *("0", "+0", "-0", ":0", "root", "1000", "0:0", "SYS_ADMIN", "ALL", "unconfined"),
        *("seccomp=unconfined", "kernel.core_pattern", "syslog", "json-file", "c *:* rwm"),
        *("/system.slice", "private", "rshared", "volume", "bind", "tmpfs", "nofile"),
    ]
    formed = [
        *(f"container:{r}" for r in refs[:3]),
        *(f"{r}:alias" for r in refs[:3]),
        *(f"{r}:/x" for r in (B_VOL, "/etc", f"{ALLOWED_ROOT}/d")),
    ]
    return st.sampled_from([*plain, *refs, *formed])


def value_of(kind: Type, world: dict[str, str], depth: int) -> st.SearchStrategy[Any]:
    if kind == "string":
        return strings(world)
    if kind == "integer":
        return st.sampled_from([-1000, -1, 0, 1, 1000, 2**31])
    if kind == "boolean":
        return st.booleans()
    if kind == "number":
        return st.sampled_from([0, 0.5, -1])
    if not isinstance(kind, dict) or depth > 3:
        return st.none()
    if "list" in kind:
        return st.lists(value_of(kind["list"], world, depth + 1), max_size=2)
    if "map" in kind:
        keys = st.one_of(strings(world), st.sampled_from(["net.ipv4.ip_forward", "kernel.shmmax"]))
        pairs = st.lists(st.tuples(keys, value_of(kind["map"], world, depth + 1)), max_size=2)
        return pairs.map(lambda p: Obj(list(dict(p).items())))  # a map: keys are data, once each
    return object_of(kind["def"], world, depth + 1)


@st.composite
def _object(draw: st.DrawFn, name: str, world: dict[str, str], depth: int) -> Obj:
    fields = definition(name).fields
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), max_size=5, unique=True))
    out = Obj()
    for field in chosen:
        key = draw(spellings(field))
        out.append((key, draw(value_of(fields[field], world, depth))))
        if draw(st.integers(0, 19)) == 0:  # now and then a key twice, spelled apart
            out.append((draw(spellings(field)), draw(value_of(fields[field], world, depth))))
    return out


def object_of(name: str, world: dict[str, str], depth: int = 0) -> st.SearchStrategy[Obj]:
    return _object(name, world, depth)


def _with(obj: Obj, **fixed: Any) -> Obj:
    """The object with these fields set (whatever spelling the draw used is dropped)."""
    folded = {k.lower() for k in fixed}
    kept = [(k, v) for k, v in obj if k.lower().replace("\u017f", "s") not in folded]
    return Obj([*kept, *fixed.items()])


# ---- the oracle ----------------------------------------------------------------------------


def reaches_b(info: dict[str, Any], world: dict[str, str]) -> list[str]:
    """What the daemon made of the container that is one of B's objects: the links,
    volumes-from and ``container:`` joins it recorded, its mounts' volumes and sources, the
    networks it is on (where inspect shows the relations the daemon resolved)."""
    ctr, net = world["ctr"], world["net"]
    host = info.get("HostConfig") or {}
    related = [
        host.get("Links"),
        host.get("VolumesFrom"),
        *(  # a mode names a container only as container:<name> (else start refuses it)
            str(host.get(k)).partition(":")[2]
            for k in ("NetworkMode", "PidMode", "IpcMode", "Cgroup")
            if str(host.get(k) or "").startswith("container:")
        ),
        [(m.get("Name"), m.get("Source")) for m in info.get("Mounts") or []],
        [  # the networks by name and id (an EndpointID a client wrote is only text)
            (name, (ep or {}).get("NetworkID"))
            for name, ep in ((info.get("NetworkSettings") or {}).get("Networks") or {}).items()
        ],
    ]
    found = []
    for text in _strings(related):
        for piece in text.replace(":", "/").split("/"):
            hex_prefix = len(piece) >= 6 and (ctr.startswith(piece) or net.startswith(piece))
            if piece in (B_CTR, B_VOL, B_NET) or hex_prefix:
                found.append(text)
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _volumes(sock: str) -> dict[str, Any]:
    return {v["Name"]: v for v in (attack.get(sock, "/v1.41/volumes") or {}).get("Volumes", [])}


def _refused(status: int, answer: Any) -> bool:
    """Refused by plugstrip or by the daemon itself (its 500s for values Go cannot decode)."""
    assert status >= 400 and isinstance(answer, dict) and answer.get("message"), answer
    by = "plugstrip" if "plugstrip" in answer["message"] else "the daemon"
    event(f"refused by {by}")
    return True


# ---- the properties -----------------------------------------------------------------------


@EXAMPLE
@given(data=st.data())
def test_creates_from_the_schema(world: dict[str, str], dockerd: str, data: st.DataObject) -> None:
    body = _with(data.draw(object_of("ContainerCreateBody", world)), Image="busybox")
    text = encode(_with(body, Cmd=["true"]), data.draw(st.lists(st.booleans(), max_size=8)))
    daemon, name = dockerd.removeprefix("unix://"), f"sp-{uuid.uuid4().hex[:10]}"
    status, answer = attack.send(
        world["socket"], "POST", f"/v1.41/containers/create?name={name}", text
    )
    try:
        info = attack.get(daemon, f"/v1.41/containers/{name}/json")
        if status != 201:
            assert _refused(status, answer) and info is None, (status, answer, text)
            return
        event("created")
        found = attack.powers(info, ALLOWED_ROOT, _volumes(daemon), baseline(dockerd))
        assert not found, f"{text} let through {found}"
        assert not reaches_b(info, world), f"{text} reaches B: {reaches_b(info, world)}"
    finally:
        docker(dockerd, "rm", "-f", "-v", name, check=False)


@EXAMPLE
@given(data=st.data())
def test_updates_from_the_schema(world: dict[str, str], dockerd: str, data: st.DataObject) -> None:
    body = data.draw(object_of("ContainerUpdateBody", world))
    text = encode(body, [])
    status, answer = attack.send(
        world["socket"], "POST", f"/v1.41/containers/{A_TARGET}/update", text
    )
    if status != 200:
        assert _refused(status, answer), (status, answer, text)
        return
    event("updated")
    info = attack.get(dockerd.removeprefix("unix://"), f"/v1.41/containers/{A_TARGET}/json")
    found = attack.powers(info, ALLOWED_ROOT, {}, baseline(dockerd))
    assert not found, f"{text} let through {found}"


@EXAMPLE
@given(data=st.data())
def test_execs_from_the_schema(world: dict[str, str], dockerd: str, data: st.DataObject) -> None:
    body = data.draw(object_of("ContainerExecBody", world))
    body = _with(body, Cmd=["id", "-u"], AttachStdout=True, Tty=True, Detach=False)
    text = encode(body, data.draw(st.lists(st.booleans(), max_size=4)))
    status, answer = attack.send(
        world["socket"], "POST", f"/v1.41/containers/{A_TARGET}/exec", text
    )
    if status != 201:
        assert _refused(status, answer), (status, answer, text)
        return
    event("exec created")
    daemon = dockerd.removeprefix("unix://")
    exec_id = answer["Id"]
    _, output = attack.send(daemon, "POST", f"/v1.41/exec/{exec_id}/start", '{"Tty":true}')
    info = attack.get(daemon, f"/v1.41/exec/{exec_id}/json")
    assert not info["ProcessConfig"].get("privileged"), text
    uid = str(output).strip()
    if not uid.isdigit():  # nothing ran: runc refused the user
        assert "unable to find user" in uid or info.get("ExitCode"), (text, output, info)
        event("exec refused by runc")
        return
    event("exec ran")
    assert uid != "0", f"{text} ran as root ({info['ProcessConfig']})"


ANSWER_ROUTES = [
    "/v1.41/containers/json?all=1",
    "/v1.41/networks",
    "/v1.41/volumes",
    "/v1.41/system/df",
    "/v1.41/images/json",
    "/v1.41/containers/{ref}/json",
    "/v1.41/networks/{ref}",
    "/v1.41/volumes/{ref}",
    "/v1.41/networks/none",
]


@EXAMPLE
@given(data=st.data())
def test_answers_hold_nothing_of_b(world: dict[str, str], data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(ANSWER_ROUTES))
    ref = data.draw(st.sampled_from(b_refs(world)))
    target = route.replace("{ref}", quote(ref, safe=""))
    if "?" not in target and "{" not in route and data.draw(st.booleans()):
        by = data.draw(st.sampled_from(["name", "id", "label"]))
        filters = {by: [ref if by != "label" else f"io.plugstrip.owner={B_OWNER}"]}
        target += "?filters=" + quote(json.dumps(filters), safe="")
    raw = _raw(world["socket"], target)
    written = target.encode()
    for secret in {*b_refs(world), world["ctr"][:12], world["net"][:12], f"b-{RUN}"}:
        if secret.encode() not in written:
            assert secret.encode() not in raw, (target, raw[:1500])


def _raw(sock: str, target: str) -> bytes:
    _, answer = attack.send(sock, "GET", target, headers={"Content-Type": ""})
    return json.dumps(answer).encode()
