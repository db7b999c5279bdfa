"""Container names on plugstrip networks, answered at 127.0.0.12:53 inside each namespace
plugstrip serves (a holder's, or a container's own).

Beside Docker's embedded DNS, not on it: Docker's resolver takes 127.0.0.11:53 in any
namespace on a Docker network (a DNAT rule in there), so plugstrip listens next door and
is reached either directly (a holder's ``--dns``, a rewritten resolv.conf) or as the
external server Docker's resolver asks for the names it does not know.

One UDP socket per namespace, made inside it, so every query says by the socket it came in
on which container asks: a name resolves only to the addresses it has on networks the
asker shares (weaveDNS answered every name to everyone). Names that are not ours go to the
upstream resolvers: a holder's (the container's own ``--dns``, else the host's; sent from
plugstrip, in the host's namespace, so a loopback resolver works) get names with a dot,
unless the container is only on internal networks; a container's own resolvers (Docker's
among them) get every name plugstrip does not answer, from inside its namespace, as they
did before plugstrip came. Single-label names that are not containers get NXDOMAIN from
a holder's server, as they would from any public resolver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from netaddr import IPAddress

from plugstrip.netdrivers.datapath.netlink import socket_in

log = logging.getLogger("plugstrip.dns")

ADDRESS = "127.0.0.12"
PORT = 53
TTL = 600  # Docker's
FORWARD_TIMEOUT = 3.0

Resolve = Callable[[str, str], Awaitable[list[IPAddress]]]  # (owner, name) -> addresses


@dataclass(frozen=True)
class Upstreams:
    servers: tuple[str, ...]
    forward: bool  # False for a container only on internal networks
    # Asked from inside this namespace, with every name: the container's own resolvers.
    netns: str | None = None


def host_resolvers(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ()
    # plugstrip runs in the host's namespace, so a loopback resolver works from here
    return tuple(ln.split()[1] for ln in lines if ln.split()[:1] == ["nameserver"])


class NameServer:
    def __init__(self, resolve: Resolve) -> None:
        self._resolve = resolve
        # per owner: the namespace (its inode) served, and the socket serving it
        self._serving: dict[str, tuple[int, asyncio.DatagramTransport]] = {}

    async def serve(self, owner: str, netns_path: str, upstreams: Upstreams) -> None:
        """Answer ``owner``'s queries in its namespace; again after it was re-made (a new
        namespace), and nothing new while the same one is served."""
        netns = os.stat(netns_path).st_ino
        current = self._serving.get(owner)
        if current is not None and current[0] == netns:
            return
        self.stop(owner)
        sock = await asyncio.to_thread(socket_in, netns_path, socket.SOCK_DGRAM, (ADDRESS, PORT))
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Responder(self._resolve, owner, upstreams), sock=sock
        )
        self._serving[owner] = (netns, transport)

    def stop(self, owner: str) -> None:
        current = self._serving.pop(owner, None)
        if current is not None:
            current[1].close()

    def close(self) -> None:
        for owner in list(self._serving):
            self.stop(owner)


class Responder(asyncio.DatagramProtocol):
    def __init__(self, resolve: Resolve, owner: str, upstreams: Upstreams) -> None:
        self.resolve = resolve
        self.owner = owner
        self.upstreams = upstreams
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's: no subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return  # not DNS: nothing sensible to answer
        reply = await self.reply(query, data)
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    async def reply(self, query: dns.message.Message, data: bytes) -> bytes | None:
        if len(query.question) != 1:
            return _error(query, dns.rcode.FORMERR)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        found = await self.resolve(self.owner, name)
        if found:
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA | dns.flags.RA
            for rdtype, version in ((dns.rdatatype.A, 4), (dns.rdatatype.AAAA, 6)):
                addresses = [str(a) for a in found if a.version == version]
                if addresses and question.rdtype in (rdtype, dns.rdatatype.ANY):
                    response.answer.append(
                        dns.rrset.from_text_list(
                            question.name, TTL, dns.rdataclass.IN, rdtype, addresses
                        )
                    )
            return response.to_wire()  # other types of our names: no data, not an error
        up = self.upstreams
        if ("." in name or up.netns is not None) and up.forward and up.servers:
            return await self._forward(data)
        return _error(query, dns.rcode.NXDOMAIN)

    async def _forward(self, data: bytes) -> bytes | None:
        for server in self.upstreams.servers:
            try:
                return await _udp_exchange(data, server, self.upstreams.netns)
            except (OSError, TimeoutError) as exc:
                log.debug("upstream resolver %s failed: %s", server, exc)
        return None  # the client retries or gives up, as with a dead resolver


def _error(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    response.set_rcode(rcode)
    return response.to_wire()


async def _udp_exchange(data: bytes, server: str, netns: str | None) -> bytes:
    loop = asyncio.get_running_loop()
    sock = None
    if netns is not None:
        sock = await asyncio.to_thread(socket_in, netns, socket.SOCK_DGRAM, ("0.0.0.0", 0))
        sock.connect((server, PORT))
    answer: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, reply: bytes, addr: tuple[str, int]) -> None:
            if not answer.done():
                answer.set_result(reply)

        def error_received(self, exc: Exception) -> None:
            if not answer.done():
                answer.set_exception(exc)

    transport, _ = await loop.create_datagram_endpoint(
        Client, **({"sock": sock} if sock is not None else {"remote_addr": (server, PORT)})
    )
    try:
        transport.sendto(data)
        return await asyncio.wait_for(answer, FORWARD_TIMEOUT)
    finally:
        transport.close()
