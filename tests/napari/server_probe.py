"""Run as a demo user on a session's node (python3 -c): may this user reach the session's
Jupyter server, and its desktop, directly (not through the hub)?  Prints one JSON line.

argv: the node's address, the server's port, the desktop's websocket path.
* ``loopback``: connecting to the port on 127.0.0.1: "open", or why it failed;
* ``desktop``: the status line the server answers a websocket upgrade of the desktop's
  VNC stream with, with no credential (101 would be the stream itself);
* ``greeting``: what came after a 101, "RFB ..." if the VNC server spoke.
"""

import base64
import json
import os
import socket
import sys

address, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def loopback() -> str:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
        return "open"
    except OSError as exc:
        return type(exc).__name__


def desktop() -> tuple[str, str]:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET {path} HTTP/1.1\r\nHost: {address}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    with socket.create_connection((address, port), timeout=10) as sock:
        sock.sendall(request.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        head, _, rest = answer.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0].decode(errors="replace")
        if " 101 " not in status:
            return status, ""  # refused: what follows is the refusal's page
        if not rest:
            sock.settimeout(5)
            try:
                rest = sock.recv(64)
            except OSError:
                pass
        return status, rest[:12].decode(errors="replace")


status, greeting = desktop()
print(json.dumps({"loopback": loopback(), "desktop": status, "greeting": greeting}))
