"""Run as a demo user (python3 -c): may this user reach a desktop?  Prints one JSON line.

argv: X11 socket path, VNC socket path, the desktop owner's Xauthority file, display number.
* ``vnc``: the VNC server's greeting ("RFB 003.008"), or why the connection failed;
* ``cookie``: "read" if the Xauthority file is readable, else why not;
* ``x11``: the X server's answer to a connection set-up, with the owner's MIT cookie for
  the display when the file could be read, with none otherwise: "accepted" or "refused".
"""

import json
import socket
import struct
import sys

x11_path, vnc_path, xauthority, display = sys.argv[1:5]
COOKIE = b"MIT-MAGIC-COOKIE-1"


def cookie_for(data: bytes, number: str) -> bytes | None:
    """The last MIT cookie for ``number`` in an Xauthority file (records of four
    length-prefixed fields after a 2-byte family)."""
    found, pos = None, 0
    while pos + 2 <= len(data):
        pos += 2
        fields = []
        for _ in range(4):
            (length,) = struct.unpack(">H", data[pos:pos + 2])
            fields.append(data[pos + 2:pos + 2 + length])
            pos += 2 + length
        _address, num, name, secret = fields
        if num.decode() == number and name == COOKIE:
            found = secret
    return found


def pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def x11(cookie: bytes | None) -> str:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    try:
        sock.connect(x11_path)
    except OSError as exc:
        return type(exc).__name__
    name, secret = (COOKIE, cookie) if cookie else (b"", b"")
    sock.sendall(b"l\0" + struct.pack("<HHHH", 11, 0, len(name), len(secret)) + b"\0\0"
                 + pad(name) + pad(secret))
    answer = sock.recv(8)
    sock.close()
    return {0: "refused", 1: "accepted", 2: "authenticate"}.get(answer[0], "?") if answer else "closed"


def vnc() -> str:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    try:
        sock.connect(vnc_path)
        return sock.recv(12).decode(errors="replace").strip()
    except OSError as exc:
        return type(exc).__name__
    finally:
        sock.close()


try:
    with open(xauthority, "rb") as f:
        cookie, cookie_state = cookie_for(f.read(), display), "read"
except OSError as exc:
    cookie, cookie_state = None, type(exc).__name__
print(json.dumps({"vnc": vnc(), "cookie": cookie_state, "x11": x11(cookie)}))
