"""plugstrip against the daemon itself, the floor of any hop and the prior art, in one run.

    /opt/plugstrip/bin/python -m bench.proxy_bench [--quick]

On a private dockerd, each figure is taken directly, through a bare splice relay
(bench/splice_relay.py: the bytes never leave the kernel, no parsing), through plugstrip
(no adapters, networks on as by default; with a Python adapter on container create for
`docker run`; with --no-networks for the list rows), and through HAProxy set up as
docker-socket-proxy sets it up (HTTP mode, server connections closed after each call, its
timeouts; its allow rules left out, i.e. everything allowed). The paths take turns, and
streams report the median of the rounds. Printed for each: the figure per path and the
ratio to the daemon:
- added median latency of GET /_ping over a kept-alive connection (target: <= HAProxy's);
- calls per second (ping, container list, container inspect) from 32 and 256 concurrent
  keep-alive clients (target: plugstrip >= HAProxy), and the CPU each proxy process
  spends per ping;
- throughput of `docker exec` output, `docker logs` and `docker cp` (target: plugstrip
  >= 0.95x the splice relay and never below HAProxy), with plugstrip's CPU s per GiB;
- plugstrip's peak RSS while 1 GiB streams through it (target: flat, under 100 MB);
- with 300 containers and no plugstrip network: a container list and container
  inspects, networks on against --no-networks (target <= 1.05x).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from plugstrip.cli.main import UnixHTTPConnection
from tests import harness

PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"


def ping_latencies(sock_path: str, count: int) -> list[float]:
    """Sequential pings on one kept-alive connection; seconds per round trip."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    out = []
    for _ in range(count):
        started = time.perf_counter()
        s.sendall(PING)
        got = b""
        while not got.endswith(b"\r\n\r\nOK"):
            got += s.recv(4096)
        out.append(time.perf_counter() - started)
    s.close()
    return out


async def _connect(sock_path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection, once the listener's backlog has room (a full one fails at once)."""
    for _ in range(500):
        try:
            return await asyncio.open_unix_connection(sock_path)
        except BlockingIOError:
            await asyncio.sleep(0.01)
    raise TimeoutError(f"{sock_path}: backlog full for 5 s")


async def request_rate(
    sock_path: str, clients: int, seconds: float, request: bytes = PING
) -> float:
    """Calls per second from ``clients`` concurrent kept-alive connections, each waiting
    for its answer before the next call. The connections are
    opened first, one after another, so only calls are timed."""
    connections = [await _connect(sock_path) for _ in range(clients)]
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            if b"transfer-encoding: chunked" in head:  # JSON: the last chunk cannot be in it
                await reader.readuntil(b"\r\n0\r\n\r\n")
            else:
                length = head.partition(b"content-length:")[2].partition(b"\r\n")[0]
                await reader.readexactly(int(length))
            done += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(*c) for c in connections))
    return done / (time.perf_counter() - started)


# docker-socket-proxy's HAProxy settings (HTTP mode, server side closed after each call,
# its timeouts), without its allow rules: every API section is allowed here.
HAPROXY_CFG = """\
global
    maxconn 4000
defaults
    mode http
    option dontlognull
    option http-server-close
    option redispatch
    retries 3
    timeout http-request 10s
    timeout queue 1m
    timeout connect 10s
    timeout client 10m
    timeout server 10m
    timeout http-keep-alive 10s
    maxconn 3000
backend dockerbackend
    server dockersocket unix@{upstream}
frontend dockerfrontend
    bind unix@{listen}
    default_backend dockerbackend
"""


@dataclass(frozen=True)
class Target:
    """A way to the daemon: directly, or through a proxy."""

    name: str
    host: str  # DOCKER_HOST

    @property
    def socket(self) -> str:
        return self.host.removeprefix("unix://")


def start_haproxy(upstream: str, workdir: Path) -> tuple[Target, subprocess.Popen[bytes]]:
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "haproxy.sock"
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(upstream=upstream.removeprefix("unix://"), listen=sock))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL)
    harness.wait_for(sock.exists, 10, "haproxy did not start")
    return Target("HAProxy", f"unix://{sock}"), proc


def start_splice_relay(upstream: str, workdir: Path) -> tuple[Target, subprocess.Popen[bytes]]:
    """The floor of any hop: bench/splice_relay.py, bytes moved in the kernel."""
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "splice.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.splice_relay", str(sock), upstream.removeprefix("unix://")]
    )
    harness.wait_for(sock.exists, 10, "the splice relay did not start")
    return Target("splice relay", f"unix://{sock}"), proc


def cpu_seconds(pid: int) -> float:
    """User and system CPU of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(host: str, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["docker", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
        env={**os.environ, "DOCKER_HOST": host},
        timeout=600,
    )
    return time.perf_counter() - started


def in_turns(
    rounds: int,
    targets: Sequence[Target],
    measure: Callable[[Target], float],
    cpu_of: dict[str, int] | None = None,
) -> tuple[list[list[float] | None], dict[str, float]]:
    """``measure`` of each target, ``rounds`` times, the targets taking turns, so a slow
    moment of the machine is shared rather than landing on one. None for a target where a
    docker command fails (printed once). With ``cpu_of`` (target name: pid), also the CPU
    seconds that process spent over its own turns."""
    got: list[list[float] | None] = [[] for _ in targets]
    cpu = dict.fromkeys(cpu_of or {}, 0.0)
    for _ in range(rounds):
        for i, target in enumerate(targets):
            values = got[i]
            if values is None:
                continue
            pid = (cpu_of or {}).get(target.name)
            before = cpu_seconds(pid) if pid else 0.0
            try:
                values.append(measure(target))
            except subprocess.CalledProcessError as exc:
                print(f"{target.name}: {' '.join(exc.cmd)} failed: {exc.stderr.strip()}")
                got[i] = None
            if pid:
                cpu[target.name] += cpu_seconds(pid) - before
    return got, cpu


def medians(got: list[list[float] | None]) -> list[float | None]:
    return [None if g is None else statistics.median(g) for g in got]


def docker_command(*args: str) -> Callable[[Target], float]:
    return lambda target: timed(target.host, *args)


def api_calls(path: str, count: int) -> Callable[[Target], float]:
    """Seconds for ``count`` GETs of ``path`` on one kept-alive connection, each answer
    read whole."""

    def measure(target: Target) -> float:
        conn = UnixHTTPConnection(target.socket)
        started = time.perf_counter()
        for _ in range(count):
            conn.request("GET", path)
            conn.getresponse().read()
        elapsed = time.perf_counter() - started
        conn.close()
        return elapsed

    return measure


def stream_row(
    targets: Sequence[Target], rounds: int, pid: int, label: str, mb: float, *cmd: str
) -> Row:
    """MiB/s of ``docker CMD`` moving ``mb`` MiB, per target, with the verdict against the
    floor and plugstrip's CPU per GiB."""
    got, cpu = in_turns(rounds, targets, docker_command(*cmd), cpu_of={"plugstrip": pid})
    speed = [None if t is None else mb / t for t in medians(got)]
    by_name = {t.name: v for t, v in zip(targets, speed, strict=True)}
    verdict = stream_verdict(by_name, cpu["plugstrip"], rounds * mb / 1024)
    return (f"{label} ({mb:.0f} MiB)", with_ratios(speed, "MiB/s"), verdict)


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


Row = tuple[str, list[str], str]  # measure, figure per path, target


def with_ratios(
    values: Sequence[float | None], unit: str, scale: float = 1.0, digits: int = 0
) -> list[str]:
    """Each path's figure, and after the first (the daemon's) its multiple of that."""
    base = values[0]
    assert base is not None, "the daemon itself failed"
    cells = [f"{base * scale:.{digits}f} {unit}"]
    for v in values[1:]:
        cells.append("fails" if v is None else f"{v * scale:.{digits}f} {unit} ({v / base:.2f}x)")
    return cells


def stream_verdict(speed: dict[str, float | None], cpu: float, gib: float) -> str:
    """plugstrip against the floor (the splice relay) and the prior art (HAProxy)."""
    ours, floor, haproxy = (speed.get(k) for k in ("plugstrip", "splice relay", "HAProxy"))
    if ours is None:
        return "plugstrip fails"
    parts = []
    if floor:
        ok = "met" if ours >= 0.95 * floor else "not met"
        parts.append(f"{ours / floor:.2f}x splice (>= 0.95x: {ok})")
    if haproxy:
        parts.append(f"{'>=' if ours >= haproxy else '<'} HAProxy")
    parts.append(f"{cpu / gib:.1f} CPU s/GiB")
    return "; ".join(parts)


TRANSFER_MB = 300


def transfers(
    direct: str, targets: Sequence[Target], root: Path, rounds: int, pid: int
) -> list[Row]:
    """300 MB each way: uploads (a file copied into a container, an image loaded, a build
    context) and downloads (the image saved, the file copied out), on every path."""
    blob = root / "ctx" / "blob"
    blob.parent.mkdir()
    (blob.parent / "Dockerfile").write_text("FROM busybox\n")
    with blob.open("wb") as f:
        for _ in range(TRANSFER_MB):
            f.write(os.urandom(1 << 20))
    image, box = "bench-transfer:latest", "bench-transfer"
    harness.docker(direct, "create", "--name", box, "busybox", "true")
    harness.docker(direct, "cp", str(blob), f"{box}:/transfer")
    harness.docker(direct, "commit", box, image)
    saved = root / "image.tar"
    harness.docker(direct, "save", "-o", str(saved), image)
    mb = saved.stat().st_size / (1 << 20)  # busybox and the 300 MB layer
    out: list[Row] = []
    for label, size, cmd in [
        ("upload: docker cp in", TRANSFER_MB, ("cp", str(blob), f"{box}:/upload")),
        ("upload: docker load", mb, ("load", "-q", "-i", str(saved))),
        ("upload: docker build context", TRANSFER_MB, ("build", "-q", str(blob.parent))),
        ("download: docker save", mb, ("save", "-o", str(root / "saved.tar"), image)),
        ("download: docker cp out", TRANSFER_MB, ("cp", f"{box}:/transfer", str(root))),
    ]:
        out.append(stream_row(targets, rounds, pid, label, size, *cmd))
    harness.docker(direct, "rm", "-f", box)
    harness.docker(direct, "rmi", "-f", image)
    return out


def _added_verdict(latency: list[float], names: list[str]) -> str:
    if "HAProxy" not in names:
        return "plugstrip: <= HAProxy's added latency"
    added = [latency[names.index(n)] - latency[0] for n in ("plugstrip", "HAProxy")]
    return f"plugstrip adds {added[0] / added[1]:.2f}x what HAProxy adds (<= 1.0x)"


def rate_of(clients: int, seconds: float, request: bytes) -> Callable[[Target], float]:
    return lambda target: asyncio.run(request_rate(target.socket, clients, seconds, request))


def rate_rows(
    targets: Sequence[Target], container: str, seconds: float, rounds: int, pids: dict[str, int]
) -> list[Row]:
    """Calls per second at 32 and 256 concurrent clients, for what pollers call: ping,
    list, inspect. Targets take turns, each round; medians; the verdict is plugstrip's
    multiple of HAProxy's rate in the same run. For pings, also the CPU each proxy in
    ``pids`` (target name: pid) spent per call over its own turns: where the rate is lost."""
    calls = [
        ("GET /_ping", PING),
        ("GET /containers/json", b"GET /v1.41/containers/json HTTP/1.1\r\nHost: docker\r\n\r\n"),
        (
            "GET /containers/ID/json",
            f"GET /v1.41/containers/{container}/json HTTP/1.1\r\nHost: docker\r\n\r\n".encode(),
        ),
    ]
    names = [t.name for t in targets]
    out: list[Row] = []
    for clients in (32, 256):
        for label, request in calls:
            rates = rate_of(clients, seconds, request)
            got, cpu = in_turns(rounds, targets, rates, cpu_of=pids)
            rate = medians(got)
            by_name = dict(zip(names, rate, strict=True))
            ours, theirs = by_name.get("plugstrip"), by_name.get("HAProxy")
            verdict = f"plugstrip {ours / theirs:.2f}x HAProxy (>= 1.0x)" if ours and theirs else ""
            out.append((f"{label}/s, {clients} clients", with_ratios(rate, "/s"), verdict))
            if request is PING:  # calls made: the sum of the rounds' rates x seconds
                calls_made = {n: sum(got[names.index(n)] or []) * seconds for n in cpu}
                cells = [
                    f"{cpu[n] / calls_made[n] * 1e6:.0f} us" if n in cpu else "-" for n in names
                ]
                out.append((f"  CPU per ping, {clients} clients", cells, "proxy process only"))
    return out


def calls_without_plugstrip_networks(
    direct: str, plain: harness.Plugstrip, bare: harness.Plugstrip, rounds: int, others: int
) -> list[Row]:
    """What dashboards poll, with 300 containers on the daemon and no plugstrip network:
    through plugstrip (networks on, the default) against --no-networks."""
    for i in range(300):
        harness.docker(direct, "create", "--name", f"bench-many-{i}", "busybox", "true")
    try:
        paths = [
            Target("daemon", direct),
            Target("plugstrip", plain.host),
            Target("--no-networks", bare.host),
        ]
        out: list[Row] = []
        for label, path, count in [
            ("GET /containers/json?all=1 (300), 5 lists", "/v1.41/containers/json?all=1", 5),
            ("container inspect, 100 calls", "/v1.41/containers/bench-many-7/json", 100),
        ]:
            secs = medians(in_turns(rounds * 2, paths, api_calls(path, count))[0])
            cells = with_ratios(secs, "ms", 1e3, digits=1)
            on, off = secs[1], secs[2]
            ratio = f"{on / off:.2f}x" if on and off else "?"
            verdict = f"networks on {ratio} of --no-networks (<= 1.05x)"
            out.append((label, [cells[0], "-", cells[1], *["-"] * others], verdict))
            out.append(("  the same, --no-networks", ["-", "-", cells[2], *["-"] * others], ""))
        return out
    finally:
        names = [f"bench-many-{i}" for i in range(300)]
        harness.docker(direct, "rm", "-f", *names)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    args = parser.parse_args()
    pings, rate_seconds, rounds = (2000, 1.0, 3) if args.quick else (10000, 3.0, 5)
    stream_mb = 256 if args.quick else 1024

    root = Path(tempfile.mkdtemp(prefix="ps-bench-"))
    direct, dockerd = harness.start_dockerd(root)
    plain = harness.start_plugstrip(direct, root / "plain")
    hooked = harness.start_plugstrip(
        direct,
        root / "hooked",
        config=(
            'endpoints: {"POST /containers/create": {pre: [tag]}}\n'
            'adapters: {tag: {python: "tests.sample_adapters:Tagger"}}\n'
        ),
    )
    bare = harness.start_plugstrip(direct, root / "bare", extra=["--no-networks"])
    splice_target, splice = start_splice_relay(direct, root / "splice")
    targets = [Target("daemon", direct), splice_target, Target("plugstrip", plain.host)]
    haproxy = None
    if shutil.which("haproxy"):
        ha_target, haproxy = start_haproxy(direct, root / "haproxy")
        targets.append(ha_target)
    else:
        print("haproxy is not installed (scripts/install-deps test installs it): left out")
    rows: list[Row] = []
    others = len(targets) - 3  # HAProxy's cells, in rows it has no figure in

    def plugstrip_only(figure: str) -> list[str]:
        return ["-", "-", figure, *["-"] * others]

    def row(measure: str, figures: list[str], target: str = "") -> None:
        rows.append((measure, figures, target))

    try:
        for target in targets:
            ping_latencies(target.socket, 200)  # warm up
        lat = [statistics.median(ping_latencies(p.socket, pings)) for p in targets]
        row(
            "GET /_ping median latency",
            [f"{lat[0] * 1e3:.3f} ms"] + [f"+{(v - lat[0]) * 1e3:.3f} ms" for v in lat[1:]],
            _added_verdict(lat, [t.name for t in targets]),
        )
        c = "bench-" + str(int(time.time()))
        harness.docker(
            direct,
            "run",
            "-d",
            "--name",
            c,
            "busybox",
            "sh",
            "-c",
            f"head -c {stream_mb}m /dev/zero > /big; sleep 3600",
        )
        harness.wait_for(
            lambda: (
                harness.docker(direct, "exec", c, "test", "-f", "/big", check=False).returncode == 0
            ),
            60,
            "no /big",
        )
        time.sleep(2)
        logs_mb = max(stream_mb // 8, 32)
        lc = c + "-logs"
        harness.docker(
            direct,
            "run",
            "--name",
            lc,
            "busybox",
            "sh",
            "-c",
            f"head -c {logs_mb}m /dev/zero | tr '\\0' 'x' | fold -w 1000",
        )
        proxy_pids = {"plugstrip": plain.proc.pid}
        if haproxy is not None:
            proxy_pids["HAProxy"] = haproxy.pid
        rows.extend(rate_rows(targets, c, rate_seconds, 1 if args.quick else 3, proxy_pids))
        hwm_before = vm_hwm_kb(plain.proc.pid)
        rows.extend(transfers(direct, targets, root, rounds, plain.proc.pid))
        for label, mb, cmd in [
            (
                "docker exec output",
                stream_mb,
                ("exec", c, "head", "-c", f"{stream_mb}m", "/dev/zero"),
            ),
            ("docker cp out", stream_mb, ("cp", f"{c}:/big", "-")),
            ("docker logs, 1000-byte lines", logs_mb, ("logs", lc)),
        ]:
            rows.append(stream_row(targets, rounds, plain.proc.pid, label, mb, *cmd))
        hwm_after = vm_hwm_kb(plain.proc.pid)
        row(
            "plugstrip peak RSS streaming",
            plugstrip_only(f"{hwm_before / 1024:.0f} -> {hwm_after / 1024:.0f} MB"),
            "flat, < 100 MB",
        )

        run_targets = [targets[0], Target("plugstrip, create hook", hooked.host)]
        got, _ = in_turns(
            rounds * 3, run_targets, docker_command("run", "-d", "--rm", "busybox", "true")
        )
        run = medians(got)
        row(
            "docker run -d, create pre-hook",
            [*with_ratios(run, "ms", 1e3)[:1], "-", with_ratios(run, "ms", 1e3)[1]]
            + ["-"] * others,
        )
        harness.docker(direct, "rm", "-f", c, lc)
        rows.extend(calls_without_plugstrip_networks(direct, plain, bare, rounds, others))
    finally:
        for ps in (plain, hooked, bare):
            ps.stop()
        for proc in (haproxy, splice):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
        harness.stop_dockerd(dockerd)
        shutil.rmtree(root, ignore_errors=True)

    header = ("measure", *(p.name for p in targets), "target")
    table = [header] + [(m, *figures, target) for m, figures, target in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
