"""Packets nftables logs to an NFLOG group (``log group N``), read from netfilter's netlink
socket: how plugstrip/weave's flow log learns what its tables dropped.

The messages are pyroute2's netlink machinery (nfnetlink's header, typed attributes);
pyroute2 has no NFLOG socket of its own, so the two config messages and the receive loop
are here. The kernel batches log messages (up to its queue threshold or timeout): both are
set to deliver each at once.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from netaddr import IPAddress
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, nla
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_ULOG, nfgen_msg

from plugstrip.netdrivers.datapath.netlink import run_in

GROUP = 7173  # plugstrip's NFLOG group ("ps" on a phone pad, give or take)
NETLINK_NETFILTER = 12
_CONFIG, _PACKET = 1, 0  # NFULNL_MSG_*
_BIND, _COPY_PACKET = 1, 2  # NFULNL_CFG_CMD_BIND, NFULNL_COPY_PACKET
COPY_RANGE = 128  # bytes of each packet: its network and transport headers


class _config(nfgen_msg):  # type: ignore[misc]  # pyroute2 is untyped
    nla_map = (
        (1, "NFULA_CFG_CMD", "uint8"),
        (2, "NFULA_CFG_MODE", "cfg_mode"),
        (3, "NFULA_CFG_TIMEOUT", "be32"),
        (4, "NFULA_CFG_QTHRESH", "be32"),
    )

    class cfg_mode(nla):  # type: ignore[misc]
        fields = (("copy_range", "!I"), ("copy_mode", "B"), ("pad", "B"))


class _packet(nfgen_msg):  # type: ignore[misc]
    nla_map = (
        (1, "NFULA_PACKET_HDR", "cdata"),
        (2, "NFULA_MARK", "be32"),
        (3, "NFULA_TIMESTAMP", "cdata"),
        (4, "NFULA_IFINDEX_INDEV", "be32"),
        (5, "NFULA_IFINDEX_OUTDEV", "be32"),
        (6, "NFULA_IFINDEX_PHYSINDEV", "be32"),
        (7, "NFULA_IFINDEX_PHYSOUTDEV", "be32"),
        (8, "NFULA_HWADDR", "cdata"),
        (9, "NFULA_PAYLOAD", "cdata"),
        (10, "NFULA_PREFIX", "asciiz"),
    )


@dataclass(frozen=True)
class Logged:
    """One logged packet: the log rule's prefix, the interface it came in on (a bridge
    port's index, in the logging namespace), and its network header onwards."""

    prefix: str
    in_ifindex: int | None
    payload: bytes


@dataclass(frozen=True)
class Headers:
    """What a flow log says of a packet: its addresses, protocol and destination port."""

    src: IPAddress
    dst: IPAddress
    proto: str
    port: int | None


def open_group(netns: str | None, group: int = GROUP) -> socket.socket:
    """A netlink socket bound to NFLOG ``group`` in ``netns`` (blocking: run it through
    ``asyncio.to_thread``); non-blocking, for the loop's ``sock_recv``."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            mode = {"copy_range": COPY_RANGE, "copy_mode": _COPY_PACKET, "pad": 0}
            for attr in (
                ("NFULA_CFG_CMD", _BIND),
                ("NFULA_CFG_MODE", mode),
                ("NFULA_CFG_TIMEOUT", 0),
                ("NFULA_CFG_QTHRESH", 1),
            ):
                sock.send(_config_message(group, attr))
                _check_ack(sock.recv(4096))
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    return run_in(netns, make)


def _config_message(group: int, attr: tuple[str, object]) -> bytes:
    msg = _config()
    msg["nfgen_family"] = socket.AF_UNSPEC
    msg["res_id"] = group
    msg["attrs"] = [attr]
    msg["header"]["type"] = (NFNL_SUBSYS_ULOG << 8) | _CONFIG
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    msg.encode()
    return bytes(msg.data)


def _check_ack(data: bytes) -> None:
    (error,) = struct.unpack_from("=i", data, 16)  # nlmsgerr after the 16-byte header
    if error != 0:
        raise OSError(-error, f"NFLOG: {errno.errorcode.get(-error, error)}")


async def receive(sock: socket.socket) -> AsyncIterator[Logged]:
    """The packets logged to ``sock``'s group, as they come (until cancelled)."""
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.sock_recv(sock, 65536)
        offset = 0
        while offset + 16 <= len(data):
            (length, kind) = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if kind == (NFNL_SUBSYS_ULOG << 8) | _PACKET:
                msg = _packet(data[offset : offset + length])
                msg.decode()
                indev = msg.get_attr("NFULA_IFINDEX_PHYSINDEV") or msg.get_attr(
                    "NFULA_IFINDEX_INDEV"
                )
                yield Logged(
                    str(msg.get_attr("NFULA_PREFIX") or ""),
                    int(indev) if indev else None,
                    bytes(msg.get_attr("NFULA_PAYLOAD") or b""),
                )
            offset += (length + 3) & ~3


def headers(payload: bytes) -> Headers | None:
    """An IPv4 or IPv6 packet's addresses, protocol and destination port (None: neither,
    an ARP frame say)."""
    version: Literal[4, 6]
    if len(payload) >= 20 and payload[0] >> 4 == 4:
        ihl = (payload[0] & 0x0F) * 4
        number, l4, version, at = payload[9], payload[ihl:], 4, (12, 16, 20)
    elif len(payload) >= 40 and payload[0] >> 4 == 6:
        number, l4, version, at = payload[6], payload[40:], 6, (8, 24, 40)
    else:
        return None
    src = IPAddress(int.from_bytes(payload[at[0] : at[1]]), version)
    dst = IPAddress(int.from_bytes(payload[at[1] : at[2]]), version)
    proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}.get(number, str(number))
    port = int.from_bytes(l4[2:4]) if proto in ("tcp", "udp") and len(l4) >= 4 else None
    return Headers(src, dst, proto, port)
