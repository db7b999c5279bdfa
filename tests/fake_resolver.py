"""A stand-in upstream resolver for tests: answers every A query with one address.

    python3 -m tests.fake_resolver ADDRESS PORT ANSWER

Run inside a test host's namespace, it plays the host's (or a container's --dns) resolver,
so forwarding is tested with traffic that stays on loopback.
"""

from __future__ import annotations

import socket
import sys

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def main() -> None:
    address, port, answer = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        while True:
            data, peer = sock.recvfrom(4096)
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            if question.rdtype == dns.rdatatype.A:
                response.answer.append(
                    dns.rrset.from_text_list(
                        question.name, 60, dns.rdataclass.IN, dns.rdatatype.A, [answer]
                    )
                )
            sock.sendto(response.to_wire(), peer)


if __name__ == "__main__":
    main()
