"""HTTP/1.1 pipelining for many small GETs: a batch of requests sent at once on one keep-alive
connection, the responses read back in order. One round trip per batch instead of one per
object, and none of requests' per-request work (a few hundred microseconds of CPU each, which
is what bounds a transfer of ten thousand 450-byte chunks or a walk of a thousand listings).

Only plain ``http://`` without session auth or proxies takes this path, and only responses this
module follows exactly: ``200`` with a ``Content-Length`` or a chunked body. Anything else
(another status, the connection closing, an error) comes back as ``None`` for that request and
every later one of the batch, which the caller then fetches the ordinary way (requests, with
its error handling and retries)."""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*(?=\r\n)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)
_DIGEST = re.compile(rb"\r\n(?:repr-)?digest:", re.IGNORECASE)


class Response:
    """A pipelined 200 response: its header block (status line included) and its body."""

    __slots__ = ("head", "body")

    def __init__(self, head: bytes, body: bytes):
        self.head, self.body = head, body

    def states_digest(self) -> bool:
        return _DIGEST.search(self.head) is not None

    def headers(self) -> dict[str, str]:
        out = {}
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            out[name.strip().lower()] = value.strip()
        return out


def pipelinable(catalog, urls) -> str | None:
    """The ``host:port`` every URL in ``urls`` is on when they can be fetched by ``Pipeline`` from
    ``catalog`` (an ``HttpCatalog``), else None."""
    session = catalog.session
    if session.auth is not None:
        return None
    netloc = None
    for url in urls:
        if not url.startswith("http://"):
            return None
        parts = urlsplit(url)
        if netloc is None:
            netloc = parts.netloc
        elif parts.netloc != netloc:
            return None
    if not netloc or "@" in netloc:
        return None
    try:
        import requests.utils
        if session.trust_env and requests.utils.get_environ_proxies(f"http://{netloc}/"):
            return None
    except Exception:  # noqa: BLE001 - when in doubt, the ordinary path
        return None
    return netloc


def request_target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class Pipeline:
    """One keep-alive connection to ``netloc`` on which batches of GETs are pipelined."""

    def __init__(self, catalog, netloc: str, accept: str | None = None):
        self.timeout = catalog.timeout
        self.host, _, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "80")
        self.port = int(port or 80)
        self.netloc = netloc
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.pos = 0
        extra = {k: v for k, v in catalog.session.headers.items()
                 if k.lower() not in ("accept-encoding", "connection", "host", "accept")}
        extra["Accept-Encoding"] = "identity"
        if accept:
            extra["Accept"] = accept
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in extra.items())

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf = bytearray()
        self.pos = 0

    def _connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_many(self, targets: list[str]) -> list[Response | None]:
        """A ``Response`` per request target (path and query), None where it must go the
        ordinary way. At most a few hundred at once: neither side blocks on full buffers."""
        out: list[Response | None] = [None] * len(targets)
        i = 0
        for _ in range(3):  # a connection the server closed (keepalive_requests) is opened again
            if i >= len(targets):
                break
            fresh = self.sock is None
            try:
                if fresh:
                    self._connect()
                request = "".join(f"GET {t} HTTP/1.1\r\nHost: {self.netloc}\r\n{self.extra}\r\n"
                                  for t in targets[i:])
                self.sock.sendall(request.encode("latin-1"))
                progressed = False
                while i < len(targets):
                    got = self._response()
                    if got is None:
                        break
                    response, closing = got
                    out[i] = response
                    i += 1
                    progressed = True
                    if closing:
                        break
                if i < len(targets):
                    self.close()
                if not progressed and fresh:
                    break
            except ValueError:  # not a response this parser follows: the ordinary path
                self.close()
                break
            except OSError:  # a kept-alive connection the server dropped: once more, afresh
                self.close()
                if fresh:
                    break
        return out

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def _response(self) -> tuple[Response | None, bool] | None:
        """The next response (None for the response when it is not a 200), and whether the
        server closes the connection after it; None when the connection closed before it."""
        if self.pos and self.pos * 2 > len(self.buf):  # what was read is dropped (offsets below stay valid)
            del self.buf[:self.pos]
            self.pos = 0
        while True:
            end = self.buf.find(b"\r\n\r\n", self.pos)
            if end >= 0:
                break
            if len(self.buf) - self.pos > 65536:
                raise ValueError("headers too long")
            if not self._fill():
                if len(self.buf) > self.pos:
                    raise ValueError("the connection closed in the headers")
                return None
        head = bytes(self.buf[self.pos:end + 2])  # with the last header line's CRLF
        if not head.startswith(b"HTTP/1."):
            raise ValueError("not an HTTP response")
        length = _LENGTH.search(head)
        self.pos = end + 4
        if _CHUNKED.search(head):  # nginx's directory listings
            body = self._chunked()
        elif length is not None:
            start, stop = self.pos, self.pos + int(length.group(1))
            while len(self.buf) < stop:
                if not self._fill():
                    raise ValueError("short body")
            body = bytes(self.buf[start:stop])
            self.pos = stop
        else:
            raise ValueError("no Content-Length")  # cannot find the next response: give up
        closing = _CLOSE.search(head) is not None or head.startswith(b"HTTP/1.0")
        return (Response(head, body) if head[9:12] == b"200" else None), closing

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = bytes(self.buf[self.pos:end])
                self.pos = end + 2
                return line
            if len(self.buf) - self.pos > 4096 or not self._fill():
                raise ValueError("a broken chunked body")

    def _chunked(self) -> bytes:
        """A ``Transfer-Encoding: chunked`` body (size lines, data, a last chunk of 0, trailers)."""
        parts = []
        while True:
            size_line = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ValueError("a broken chunked body") from None
            if size == 0:
                while self._line():  # trailers, up to the empty line
                    pass
                return b"".join(parts)
            while len(self.buf) < self.pos + size + 2:
                if not self._fill():
                    raise ValueError("short chunked body")
            parts.append(bytes(self.buf[self.pos:self.pos + size]))
            if self.buf[self.pos + size:self.pos + size + 2] != b"\r\n":
                raise ValueError("a broken chunked body")
            self.pos += size + 2
