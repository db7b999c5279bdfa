"""The floor of any hop: a bare relay that moves bytes with splice(2), a thread per
direction, no parsing at all. It keeps each client connection paired with one upstream
connection for as long as the client keeps it, as plugstrip does, so kept-alive calls
stay kept alive.

    python3 -m bench.splice_relay LISTEN_SOCKET UPSTREAM_SOCKET
"""

from __future__ import annotations

import os
import socket
import sys
import threading

CHUNK = 1 << 20


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """src to dst through a pipe, in the kernel; then pass the half-close on."""
    r, w = os.pipe()
    try:
        while True:
            n = os.splice(src.fileno(), w, CHUNK)
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _serve(client: socket.socket, upstream_path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX)
    try:
        upstream.connect(upstream_path)
    except OSError:
        client.close()
        return
    other = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    other.start()
    _pump(client, upstream)
    other.join()
    client.close()
    upstream.close()


def main() -> None:
    listen, upstream = sys.argv[1], sys.argv[2]
    if os.path.exists(listen):
        os.unlink(listen)
    server = socket.socket(socket.AF_UNIX)
    server.bind(listen)
    server.listen(4096)
    while True:
        client, _ = server.accept()
        threading.Thread(target=_serve, args=(client, upstream), daemon=True).start()


if __name__ == "__main__":
    main()
