"""An attacker's and a witness's tools, run with the host's Python inside a container's
network namespace (``nsenter -t PID -n python3 tests/forge.py ...``): what a process
with only ``NET_RAW`` can put on the wire, and what arrives at a port.

    forge.py send IFNAME JSON     frames (``frames``: a list of specs) on IFNAME
    forge.py listen PORT SECONDS  UDP datagrams to PORT (IPv4 and IPv6) as JSON lines

A spec is {"kind": "udp4" | "udp6" | "arp" | "na" | "ra", ...}: MACs and addresses as
text; see ``frame``. Standard library only: it runs where the test's Python is.
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import struct
import sys
import time
from typing import Any

ETH_IP, ETH_ARP, ETH_IP6 = 0x0800, 0x0806, 0x86DD


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _eth(dst: str, src: str, kind: int, payload: bytes) -> bytes:
    return _mac(dst) + _mac(src) + struct.pack("!H", kind) + payload


def _ip4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, _ip(src), _ip(dst)
    )
    head = head[:10] + struct.pack("!H", _sum(head)) + head[12:]
    return head + payload


def _ip6(src: str, dst: str, proto: int, payload: bytes, hops: int = 64) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), proto, hops) + _ip(src) + _ip(dst) + payload


def _l4_sum6(src: str, dst: str, proto: int, data: bytes) -> int:
    pseudo = _ip(src) + _ip(dst) + struct.pack("!IxxxB", len(data), proto)
    return _sum(pseudo + data)


def _udp(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    head = struct.pack("!HHHH", sport, dport, 8 + len(data), 0)
    if ":" not in src:
        return head + data  # IPv4: no checksum is allowed
    checksum = _l4_sum6(src, dst, 17, head + data) or 0xFFFF
    return head[:6] + struct.pack("!H", checksum) + data


def _icmp6(src: str, dst: str, body: bytes) -> bytes:
    checksum = _l4_sum6(src, dst, 58, body)
    return body[:2] + struct.pack("!H", checksum) + body[4:]


def frame(spec: dict[str, Any]) -> bytes:
    kind = spec["kind"]
    eth_src, eth_dst = spec["eth_src"], spec.get("eth_dst", "ff:ff:ff:ff:ff:ff")
    data = spec.get("data", "forged").encode()
    if kind == "udp4":
        udp = _udp(spec["src"], spec["dst"], spec.get("sport", 40000), spec["dport"], data)
        return _eth(eth_dst, eth_src, ETH_IP, _ip4(spec["src"], spec["dst"], 17, udp))
    if kind == "udp6":
        udp = _udp(spec["src"], spec["dst"], spec.get("sport", 40000), spec["dport"], data)
        return _eth(eth_dst, eth_src, ETH_IP6, _ip6(spec["src"], spec["dst"], 17, udp))
    if kind == "arp":  # a reply (gratuitous when spa == tpa), the sender claiming spa
        body = struct.pack("!HHBBH", 1, ETH_IP, 6, 4, spec.get("op", 2))
        body += _mac(spec["sha"]) + _ip(spec["spa"])
        body += _mac(spec.get("tha", "ff:ff:ff:ff:ff:ff")) + _ip(spec.get("tpa", spec["spa"]))
        return _eth(eth_dst, eth_src, ETH_ARP, body)
    if kind == "na":  # unsolicited, override: "target is at lladdr"
        body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + _ip(spec["target"])
        body += struct.pack("!BB", 2, 1) + _mac(spec["lladdr"])
        icmp = _icmp6(spec["src"], spec.get("dst", "ff02::1"), body)
        return _eth(
            eth_dst, eth_src, ETH_IP6, _ip6(spec["src"], spec.get("dst", "ff02::1"), 58, icmp, 255)
        )
    if kind == "ra":  # "I am a router, and here is a prefix to take"
        prefix = ipaddress.ip_network(spec.get("prefix", "fd99::/64"))
        body = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
        body += struct.pack("!BB", 1, 1) + _mac(eth_src)
        body += struct.pack("!BBBBIII", 3, 4, prefix.prefixlen, 0xC0, 86400, 14400, 0)
        body += prefix.network_address.packed
        icmp = _icmp6(spec["src"], "ff02::1", body)
        return _eth(eth_dst, eth_src, ETH_IP6, _ip6(spec["src"], "ff02::1", 58, icmp, 255))
    raise SystemExit(f"unknown frame kind {kind!r}")


def send(ifname: str, specs: list[dict[str, Any]]) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for spec in specs:
            for _ in range(spec.get("times", 3)):
                sock.send(frame(spec))


def listen(port: int, seconds: float) -> None:
    socks = []
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        socks.append(sock)
    print(json.dumps({"listening": port}), flush=True)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select(socks, [], [], left)
        for sock in ready:
            data, peer = sock.recvfrom(65535)
            print(json.dumps({"from": peer[0], "data": data.decode(errors="replace")}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], json.loads(sys.argv[3]))
    elif sys.argv[1] == "listen":
        listen(int(sys.argv[2]), float(sys.argv[3]))
