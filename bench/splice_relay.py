"""The floor of any hop: a bare relay that moves bytes with splice(2), a thread per
direction, no parsing at all (plugstrip's own splice loop, with nothing around it). Each
client connection is paired with one upstream connection for as long as the client keeps
it, as plugstrip does, so kept-alive calls stay kept alive.

    python3 -m bench.splice_relay LISTEN_SOCKET UPSTREAM_SOCKET
"""

from __future__ import annotations

import os
import socket
import sys
import threading

from plugstrip.proxy.splice import move  # the same kernel path plugstrip takes for hijacks


def _serve(client: socket.socket, upstream_path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX)
    try:
        upstream.connect(upstream_path)
    except OSError:
        client.close()
        return
    other = threading.Thread(
        target=move, args=(upstream.fileno(), client.fileno(), client), daemon=True
    )
    other.start()
    move(client.fileno(), upstream.fileno(), upstream)
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
