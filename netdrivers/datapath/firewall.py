"""iptables rules a driver needs for its own bridges.

dockerd sets the FORWARD policy to DROP and bridge-nf-call-iptables=1, so frames crossing
any Linux bridge go through iptables and are dropped. Each plugstrip bridge gets an accept
rule for traffic within it (nothing between bridges: networks stay isolated), in
DOCKER-USER when dockerd made it (dockerd keeps that chain first), else at the top of
FORWARD. Steps are idempotent, like the netlink ones.
"""

from __future__ import annotations

import asyncio


async def _iptables(netns: str | None, *args: str) -> int:
    cmd = ["iptables", "-w", *args]
    if netns is not None:
        cmd = ["nsenter", f"--net={netns}", *cmd]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode not in (0, 1):  # 1: "no such rule/chain" for -C, expected
        raise RuntimeError(f"{' '.join(cmd)}: {err.decode().strip()}")
    return proc.returncode or 0


async def _chain(netns: str | None) -> str:
    return "DOCKER-USER" if await _iptables(netns, "-n", "-L", "DOCKER-USER") == 0 else "FORWARD"


def accept_rule(bridge: str) -> list[str]:
    return ["-i", bridge, "-o", bridge, "-j", "ACCEPT"]


async def allow_bridge(bridge: str, netns: str | None = None) -> None:
    chain = await _chain(netns)
    if await _iptables(netns, "-C", chain, *accept_rule(bridge)) != 0:
        await _iptables(netns, "-I", chain, *accept_rule(bridge))


async def forget_bridge(bridge: str, netns: str | None = None) -> None:
    for chain in ("DOCKER-USER", "FORWARD"):
        while await _iptables(netns, "-C", chain, *accept_rule(bridge)) == 0:
            await _iptables(netns, "-D", chain, *accept_rule(bridge))
