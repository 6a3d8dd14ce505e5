"""A TLS receiver on 127.0.0.1 that answers each request ``204`` with ``Connection: close``
and then never completes the TLS shutdown: it neither answers the client's ``close_notify``
nor closes its socket. Run as ``python tests/tls_receiver.py CERT KEY``; prints its port.

A client that waits for the peer's side of the TLS shutdown holds each such connection
(and its file descriptor) until its own shutdown timeout.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading

_held: list[ssl.SSLSocket] = []


def _serve(conn: ssl.SSLSocket) -> None:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            body += chunk
        conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
    except OSError:
        return
    _held.append(conn)  # never read from, never closed


def main() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        raw, _ = listener.accept()
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except OSError:
            raw.close()
            continue
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
