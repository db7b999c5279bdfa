"""What the policy on every call costs, against pass-through plugstrip in the same run.

    /opt/plugstrip/bin/python -m bench.policy_bench [--quick]

On a private dockerd, the paths take turns: the daemon directly, plugstrip with no
adapter, and plugstrip with the policy on every call as README configures it (its
pre-hook on ``* /**``, its post-hook on container inspect, the one answer it may change;
per-client rule sets, a cautious rule set for this uid: binds under one directory), and
the same with the post-hook on every call too. Every plugstrip runs with --no-networks,
so the differences are the policy's.
Printed: the median of GET /_ping over a kept-alive connection, and of container create
(a body with HostConfig binds, checked and forwarded; each container removed untimed),
over many short turns; the added cost is the median of differences paired in time (ping
batches of the same turn, creates the paths make one after another), which the daemon's
own drift, larger than the policy's cost on a create, does not move;
the policy's added medians against the targets (<= 0.05 ms on _ping, <= 1 ms on create).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.proxy_bench import ping_latencies
from plugstrip.cli.main import UnixHTTPConnection
from tests import harness

POLICY = """
endpoints:
  "* /**": {pre: [policy]}
  "GET /containers/*/json": {post: [policy]}
adapters:
  policy:
    use: policy
    options:
      clients:
        - match: {uid: 12345}
          rules: {read_only: true}
        - match: {}
          rules: {bind_mounts: ["/srv"], cap_add: [NET_ADMIN]}
"""
CREATE = json.dumps(
    {
        "Image": "busybox",
        "Cmd": ["true"],
        "Labels": {"bench": "policy"},
        "HostConfig": {
            "Binds": ["/srv/bench:/data:ro"],
            "CapAdd": ["NET_ADMIN"],
            "NetworkMode": "none",
            "SecurityOpt": ["no-new-privileges"],
        },
    }
).encode()


def created_in_turns(socks: list[str], count: int) -> list[list[float]]:
    """Seconds per container create on each path, the paths taking turns call by call
    (each on one kept-alive connection), so the i-th calls of every path are a pair taken
    at the same moment of the daemon's life; each container removed after, untimed."""
    conns = [UnixHTTPConnection(sock) for sock in socks]
    out: list[list[float]] = [[] for _ in socks]
    headers = {"Content-Type": "application/json"}
    for _ in range(count):
        for i, conn in enumerate(conns):
            started = time.perf_counter()
            conn.request("POST", "/v1.41/containers/create", body=CREATE, headers=headers)
            response = conn.getresponse()
            answer = json.loads(response.read())
            out[i].append(time.perf_counter() - started)
            if response.status != 201:
                raise RuntimeError(f"create failed through {socks[i]}: {answer}")
            conn.request("DELETE", f"/v1.41/containers/{answer['Id']}?force=1")
            conn.getresponse().read()
    for conn in conns:
        conn.close()
    return out


def paired(a: list[float], b: list[float]) -> float:
    """The median of b's calls minus a's, pair by pair."""
    return statistics.median(y - x for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    args = parser.parse_args()
    # many short turns, so drift (the daemon's, the machine's) falls on every path alike
    pings, creates, rounds = (200, 4, 10) if args.quick else (500, 10, 40)
    root = Path(tempfile.mkdtemp(prefix="ps-policy-bench-"))
    direct, dockerd = harness.start_dockerd(root)
    plain = harness.start_plugstrip(direct, root / "plain", extra=["--no-networks"])
    policed = harness.start_plugstrip(direct, root / "policy", POLICY, ["--no-networks"])
    everywhere = POLICY.replace("{pre: [policy]}", "{pre: [policy], post: [policy]}")
    both = harness.start_plugstrip(direct, root / "both", everywhere, ["--no-networks"])
    paths = {
        "daemon": direct,
        "pass-through": plain.host,
        "policy": policed.host,
        "policy, post too": both.host,
    }
    try:
        ping: dict[str, list[float]] = {k: [] for k in paths}
        create: dict[str, list[float]] = {k: [] for k in paths}
        socks = [host.removeprefix("unix://") for host in paths.values()]
        for _ in range(rounds):  # the paths take turns
            for name, sock in zip(paths, socks, strict=True):
                # a batch's median: one ping is too short to pair with another path's
                ping[name].append(statistics.median(ping_latencies(sock, pings)))
            for name, times in zip(paths, created_in_turns(socks, creates), strict=True):
                create[name] += times
        ms = {k: statistics.median(v) * 1e3 for k, v in ping.items()}
        cms = {k: statistics.median(v) * 1e3 for k, v in create.items()}
        print(f"{'path':<18} {'GET /_ping median':>18} {'container create median':>24}")
        for name in paths:
            print(f"{name:<18} {ms[name]:>15.3f} ms {cms[name]:>21.2f} ms")
        added_ping = paired(ping["pass-through"], ping["policy"]) * 1e3
        added_create = paired(create["pass-through"], create["policy"]) * 1e3
        post_too = paired(ping["pass-through"], ping["policy, post too"]) * 1e3
        post_create = paired(create["pass-through"], create["policy, post too"]) * 1e3
        print(
            f"with its post-hook on every call too: {post_too:+.3f} ms on _ping, "
            f"{post_create:+.2f} ms on create"
        )
        print(
            f"policy adds {added_ping:+.3f} ms to _ping (target <= 0.05 ms: "
            f"{'met' if added_ping <= 0.05 else 'NOT met'}), {added_create:+.2f} ms to create "
            f"(target <= 1 ms: {'met' if added_create <= 1 else 'NOT met'}); medians of "
            "paired differences with pass-through"
        )
    finally:
        for ps in (plain, policed, both):
            ps.stop()
        harness.stop_dockerd(dockerd)
        harness.unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("DOCKER_CLI_HINTS", "false")
    main()
