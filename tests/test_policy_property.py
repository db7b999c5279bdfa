"""Whatever the policy lets through, the daemon's own inspect shows no forbidden power.

Hypothesis writes create and exec bodies as an attacker would: keys in any case (and with
the two non-ASCII letters Go folds to ASCII), escaped, HostConfig fields inside
``HostConfig`` or at the top level or split over two objects, and powers in any of their
forms (Binds, bind Mounts, volume Mounts with bind options, capabilities as a string or a
list). Each body goes through plugstrip; anything it lets through is inspected on the
daemon directly.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import attack, harness
from tests.attack import baseline
from tests.harness import docker

Pairs = list[tuple[str, Any]]


class Obj(list[tuple[str, Any]]):
    """A JSON object as written: members in order, duplicates allowed."""


def encode(value: Any, escapes: list[bool]) -> str:
    if isinstance(value, Obj):
        members = []
        for key, sub in value:
            escape = escapes.pop() if escapes else False
            text = json.dumps(key, ensure_ascii=True)
            if escape and len(key) > 1:  # one letter written as \\uXXXX
                text = '"' + key[0] + f"\\u{ord(key[1]):04x}" + json.dumps(key[2:])[1:]
            members.append(f"{text}:{encode(sub, escapes)}")
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v, escapes) for v in value) + "]"
    return json.dumps(value)


def spellings(key: str) -> st.SearchStrategy[str]:
    folded = key.replace("s", "\u017f").replace("k", "\u212a")
    return st.one_of(
        st.just(key),
        st.just(key.lower()),
        st.just(key.upper()),
        st.just(folded),
        st.lists(st.booleans(), min_size=len(key), max_size=len(key)).map(
            lambda flips: "".join(
                c.upper() if f else c.lower() for c, f in zip(key, flips, strict=True)
            )
        ),
    )


ALLOWED_ROOT = "/srv/ps-allowed"
POWERS: list[tuple[str, Any]] = [
    ("Privileged", True),
    ("PidMode", "host"),
    ("NetworkMode", "host"),
    ("IpcMode", "host"),
    ("CgroupnsMode", "host"),
    ("Binds", ["/etc:/x"]),
    ("Binds", [f"{ALLOWED_ROOT}/../../etc:/x"]),
    ("CapAdd", "ALL"),
    ("CapAdd", ["sys_admin"]),
    ("CapAdd", ["CAP_NET_ADMIN"]),
    ("DeviceCgroupRules", ["c *:* rwm"]),
    ("SecurityOpt", ["seccomp:unconfined"]),
    ("SecurityOpt", ["apparmor=unconfined"]),
    ("Mounts", [Obj([("Type", "bind"), ("Source", "/etc"), ("Target", "/x")])]),
    (
        "Mounts",
        [
            Obj(
                [
                    ("type", "volume"),
                    ("Target", "/x"),
                    (
                        "VolumeOptions",
                        Obj(
                            [
                                (
                                    "DriverConfig",
                                    Obj(
                                        [
                                            ("Name", "local"),
                                            (
                                                "Options",
                                                Obj(
                                                    [
                                                        ("type", "none"),
                                                        ("o", "bind"),
                                                        ("device", "/etc"),
                                                    ]
                                                ),
                                            ),
                                        ]
                                    ),
                                ),
                            ]
                        ),
                    ),
                ]
            )
        ],
    ),
]
BENIGN: list[tuple[str, Any]] = [
    ("Memory", 0),
    ("Binds", [f"{ALLOWED_ROOT}/data:/d"]),
    ("CapAdd", ["CHOWN"]),
    ("NetworkMode", "none"),
    ("Privileged", False),
]


@st.composite
def create_bodies(draw: st.DrawFn) -> str:
    fields = draw(st.lists(st.sampled_from(POWERS + BENIGN), min_size=1, max_size=4))
    spelled = [(draw(spellings(k)), v) for k, v in fields]
    where = draw(st.sampled_from(["inner", "top", "split"]))
    top = Obj([(draw(spellings("Image")), "busybox"), ("Cmd", ["true"])])
    if where == "top":
        top.extend(spelled)
    elif where == "inner":
        top.append((draw(spellings("HostConfig")), Obj(spelled)))
    else:
        half = len(spelled) // 2
        top.append((draw(spellings("HostConfig")), Obj(spelled[:half])))
        top.append((draw(spellings("HostConfig")), Obj(spelled[half:])))
    escapes = draw(st.lists(st.booleans(), max_size=12))
    return encode(top, escapes)


@pytest.fixture(scope="module")
def proxied(dockerd: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("policy-property")
    config = f"""
endpoints:
  "* /**": {{pre: [policy]}}
adapters:
  policy: {{use: policy, options: {{bind_mounts: ["{ALLOWED_ROOT}"]}}}}
"""
    ps = harness.start_plugstrip(dockerd, work / "ps", config)
    target = f"prop-target-{uuid.uuid4().hex[:6]}"
    try:
        docker(
            dockerd, "run", "-d", "--name", target, "--network", "none", "busybox", "sleep", "600"
        )
        yield ps.socket
    finally:
        ps.stop()
        docker(dockerd, "rm", "-f", target, check=False)


def _volumes(sock: str) -> dict[str, Any]:
    answer = attack.get(sock, "/v1.41/volumes") or {}
    return {v["Name"]: v for v in answer.get("Volumes") or []}


@settings(max_examples=int(os.environ.get("PLUGSTRIP_PROPERTY_EXAMPLES", "80")))
@given(body=create_bodies())
def test_no_forbidden_power_reaches_the_daemon(proxied: str, dockerd: str, body: str) -> None:
    daemon = dockerd.removeprefix("unix://")
    name = f"prop-{uuid.uuid4().hex[:10]}"
    status, answer = attack.send(proxied, "POST", f"/v1.41/containers/create?name={name}", body)
    try:
        info = attack.get(daemon, f"/v1.41/containers/{name}/json")
        if status != 201:
            assert status in (400, 403), answer
            assert info is None, f"refused with {status} but created: {body}"
            return
        found = attack.powers(info, ALLOWED_ROOT, _volumes(daemon), baseline(dockerd))
        assert not found, f"{body} let through {found}"
    finally:
        docker(dockerd, "rm", "-f", "-v", name, check=False)


@st.composite
def exec_bodies(draw: st.DrawFn) -> str:
    user = draw(st.sampled_from(["", "0", "00", "root", "0:0", "root:root", "nobody", "65534"]))
    members = [("Cmd", ["true"]), (draw(spellings("User")), user)]
    if draw(st.booleans()):
        members.append((draw(spellings("Privileged")), draw(st.booleans())))
    return encode(Obj(members), draw(st.lists(st.booleans(), max_size=4)))


@settings(max_examples=int(os.environ.get("PLUGSTRIP_PROPERTY_EXAMPLES", "40")))
@given(body=exec_bodies())
def test_no_root_or_privileged_exec_reaches_the_daemon(
    proxied: str, dockerd: str, body: str
) -> None:
    daemon = dockerd.removeprefix("unix://")
    running = [c for c in attack.get(daemon, "/v1.41/containers/json") or []]
    target = next(c["Id"] for c in running if c["Names"][0].startswith("/prop-target-"))
    status, answer = attack.send(proxied, "POST", f"/v1.41/containers/{target}/exec", body)
    if status != 201:
        assert status in (400, 403), answer
        return
    info = attack.get(daemon, f"/v1.41/exec/{answer['Id']}/json")
    process = info["ProcessConfig"]
    user = (process.get("user") or "").partition(":")[0]
    assert not process.get("privileged"), body
    assert not (user == "root" or (user.isdigit() and int(user) == 0)), body
