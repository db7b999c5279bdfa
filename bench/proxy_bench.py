"""plugstrip against the daemon itself, measured in the same run, on a private dockerd.

    python3 -m bench.proxy_bench [--quick]

Prints for each measure the direct figure, the figure through plugstrip (no adapters, and
with one Python adapter on container create) and the ratio:
- added median latency of GET /_ping over a kept-alive connection (target <= 0.3 ms);
- requests per second with 32 concurrent keep-alive clients;
- streaming throughput of `docker exec` output, `docker logs` and `docker cp` (target >=
  0.9x the daemon);
- plugstrip's peak RSS while 1 GiB streams through it (target: flat, under 100 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


async def request_rate(sock_path: str, clients: int, seconds: float) -> float:
    """GET /_ping per second from ``clients`` concurrent kept-alive connections."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_unix_connection(sock_path)
        while time.perf_counter() < deadline:
            writer.write(PING)
            got = b""
            while not got.endswith(b"\r\n\r\nOK"):
                got += await reader.read(4096)
            done += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - started)


def timed(host: str, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["docker", *args],
        stdout=subprocess.DEVNULL,
        check=True,
        env={**os.environ, "DOCKER_HOST": host},
        timeout=600,
    )
    return time.perf_counter() - started


def best_of(n: int, fn: Callable[..., float], *args: str) -> float:
    return min(fn(*args) for _ in range(n))


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    args = parser.parse_args()
    pings, seconds, rounds = (2000, 3.0, 2) if args.quick else (10000, 8.0, 3)
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
    rows: list[tuple[str, str, str, str]] = []
    try:
        sock = direct[len("unix://") :]
        ping_latencies(sock, 200)  # warm up both paths
        ping_latencies(plain.socket, 200)
        d = statistics.median(ping_latencies(sock, pings))
        p = statistics.median(ping_latencies(plain.socket, pings))
        rows.append(
            (
                "GET /_ping median latency",
                f"{d * 1e3:.3f} ms",
                f"{p * 1e3:.3f} ms",
                f"+{(p - d) * 1e3:.3f} ms added (target <= 0.3)",
            )
        )

        d_rate = asyncio.run(request_rate(sock, 32, seconds))
        p_rate = asyncio.run(request_rate(plain.socket, 32, seconds))
        rows.append(
            (
                "req/s, 32 concurrent clients",
                f"{d_rate:.0f}",
                f"{p_rate:.0f}",
                f"{p_rate / d_rate:.2f}x",
            )
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
        exec_args = ("exec", c, "head", "-c", f"{stream_mb}m", "/dev/zero")
        hwm_before = vm_hwm_kb(plain.proc.pid)
        for label, cmd in [
            ("docker exec output", exec_args),
            ("docker cp out", ("cp", f"{c}:/big", "-")),
        ]:
            td = best_of(rounds, timed, direct, *cmd)
            tp = best_of(rounds, timed, plain.host, *cmd)
            rows.append(
                (
                    f"{label} ({stream_mb} MiB)",
                    f"{stream_mb / td:.0f} MiB/s",
                    f"{stream_mb / tp:.0f} MiB/s",
                    f"{td / tp:.2f}x (target >= 0.9)",
                )
            )
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
        td = best_of(rounds, timed, direct, "logs", lc)
        tp = best_of(rounds, timed, plain.host, "logs", lc)
        rows.append(
            (
                f"docker logs ({logs_mb} MiB of lines)",
                f"{logs_mb / td:.0f} MiB/s",
                f"{logs_mb / tp:.0f} MiB/s",
                f"{td / tp:.2f}x (target >= 0.9)",
            )
        )
        hwm_after = vm_hwm_kb(plain.proc.pid)
        rows.append(
            (
                "plugstrip peak RSS streaming",
                "-",
                f"{hwm_before / 1024:.0f} -> {hwm_after / 1024:.0f} MB",
                "target: flat, < 100 MB",
            )
        )

        def run_d(host: str) -> float:
            return timed(host, "run", "-d", "--rm", "busybox", "true")

        td = best_of(rounds * 3, run_d, direct)
        tp = best_of(rounds * 3, run_d, hooked.host)
        rows.append(
            (
                "docker run -d, create pre-hook",
                f"{td * 1e3:.0f} ms",
                f"{tp * 1e3:.0f} ms",
                f"{tp / td:.2f}x",
            )
        )
        harness.docker(direct, "rm", "-f", c, lc)
    finally:
        for ps in (plain, hooked):
            ps.stop()
        harness.stop_dockerd(dockerd)
        shutil.rmtree(root, ignore_errors=True)

    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("measure", "daemon direct", "through plugstrip", "ratio")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
