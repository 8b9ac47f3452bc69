"""Moving bytes: many objects in flight, large ones in parallel ranges, each verified.

* One thread pool (``threads`` workers); each worker reads through the catalog's own client
  (iRODS: python-irodsclient's pooled connections, opened without the redirect round trip and
  without the OBJ_STAT that ``IrodsCatalog.open`` makes; HTTP: the catalog's requests session, one
  GET per object; POSIX: the file system).
* Objects larger than ``range_threshold`` are read in ``range_size`` parts at once and written
  in place (``os.pwrite``) into the temporary file.
* Each object is hashed (SHA-256) as it is written and compared with the source's checksum:
  iRODS's ``sha2:`` (asked of the server when the listing has none), the SHA-256 of the source
  file for POSIX, the server's ``Repr-Digest``/``Digest`` for HTTP where it gives one (else the
  size). A mismatch, or a transient error (``CatalogUnavailable``, a broken read) is retried
  with exponential backoff; a missing object or a refusal is not.
* The bytes go to ``<final>.part-<pid>`` and are renamed to the final name only once verified;
  then a line is appended to the journal (``Journal``), which a resumed stage reads to skip what
  is there already.

Fast paths for many small objects (measured on 10 000 chunks of ~450 bytes; what cost was the
journal's fsync blocking every worker, a rename and a lock per object, one requests call per
object, and GIL contention among 16 threads copying local files):

* Small objects go to a worker in groups: a whole leaf folder that does not exist yet, or
  ``BATCH`` objects. A new leaf folder is filled under ``<folder>.part-<pid>`` and renamed into
  place once every object in it is verified (one rename per folder); if any object in it fails,
  the verified ones are renamed into place one by one and kept. A killed run leaves only
  ``.part-`` files and folders, which the next run removes. Journal lines of a group are written
  together after its rename (a kill in between only means those objects are fetched again).
* HTTP: a group is fetched by pipelined GETs on one keep-alive connection per worker
  (``_Pipeline``); each body is hashed and checked (size, and the server's digest when it
  states one) exactly as on the ordinary path, which takes over anything the pipeline could
  not bring (errors, retries).
* POSIX: one pass, read + hash + write, with at most ``POSIX_THREADS`` threads. There is no
  checksum stored at the source, so "verified" means: the bytes written are the bytes read
  (every ``write`` complete, size equal to the listing's), the file did not change while it was
  read (``fstat`` size and mtime before and after), and the journal records the SHA-256 of those
  bytes. Hashing the source a second time, as before, only compared the page cache with itself.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..catalogs.base import CatalogError, CatalogUnavailable
from .plan import Item

BLOCK = 1 << 20
BATCH = 64  # small objects handed to one worker at once (and pipelined over HTTP)
SMALL = 1 << 20  # "small": read in one piece
POSIX_THREADS = 2  # local copies: measured fastest with 1-2 threads (10 000 small files, 2 cores)
WHOLE_FOLDER = 4096  # at most this many objects in a folder filled whole and renamed into place
_SELF_VERIFIED = object()  # POSIX: the checksum is that of the bytes read (see Source._posix)


def sha2(digest: bytes) -> str:
    return "sha2:" + base64.b64encode(digest).decode()


# --- the journal -------------------------------------------------------------------------------

class Journal:
    """Append-only JSON lines, one per verified object: ``{"key", "size", "sha2"}``.

    A line is written (``os.write`` on an ``O_APPEND`` descriptor) as soon as the object is
    renamed into place, so it survives the process being killed (even ``kill -9``); it is made
    durable against a machine crash by ``fsync``, after every line (``fsync="each"``) or at most
    ``fsync_interval`` seconds later (``"batch"``, the default: group commit). A line lost in a
    crash only means that object is fetched again."""

    def __init__(self, path: Path, fsync: str = "batch", fsync_interval: float = 0.2):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.fsync = fsync
        self.interval = fsync_interval
        self.lock = threading.Lock()
        self.dirty = False
        self.closed = threading.Event()
        self.thread = None
        if fsync == "batch":
            self.thread = threading.Thread(target=self._sync_loop, daemon=True)
            self.thread.start()

    @staticmethod
    def load(path: Path) -> dict[str, dict]:
        """Verified objects by key (a torn last line, from a kill mid-write, is ignored)."""
        out: dict[str, dict] = {}
        try:
            with open(path, "rb") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and "key" in record:
                        out[record["key"]] = record
        except FileNotFoundError:
            pass
        return out

    @staticmethod
    def line(key: str, size: int, checksum: str) -> bytes:
        # what json.dumps({"key": key, "size": size, "sha2": checksum}) gives, with less work
        return f'{{"key": {json.dumps(key)}, "size": {int(size)}, "sha2": {json.dumps(checksum)}}}\n'.encode()

    def record(self, key: str, size: int, checksum: str) -> None:
        self.write(self.line(key, size, checksum))

    def write(self, lines: bytes) -> None:
        """Append whole lines in one ``write`` (``O_APPEND``: atomic with respect to the other
        writers, so no lock is held while the kernel may be busy committing its own journal)."""
        view = memoryview(lines)
        while view:
            view = view[os.write(self.fd, view):]
        if self.fsync == "each":
            os.fsync(self.fd)
        else:
            self.dirty = True  # set after the write: the next _sync covers it

    def _sync_loop(self):
        while not self.closed.wait(self.interval):
            self._sync()

    def _sync(self):
        # fsync outside the lock: writers (workers appending lines) must not wait for the disk.
        with self.lock:
            dirty, self.dirty = self.dirty, False
        if dirty:
            os.fsync(self.fd)

    def close(self):
        self.closed.set()
        if self.thread:
            self.thread.join()
        self._sync()
        os.close(self.fd)


# --- progress ----------------------------------------------------------------------------------

@dataclass
class Progress:
    objects_total: int = 0
    bytes_total: int = 0
    objects_done: int = 0
    bytes_done: int = 0
    objects_skipped: int = 0  # verified by an earlier run
    bytes_skipped: int = 0
    fetched: int = 0  # objects fetched by this run (attempts that reached the source)
    retries: int = 0
    started: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict:
        with self.lock:
            elapsed = max(time.time() - self.started, 1e-6)
            moved = self.bytes_done - self.bytes_skipped
            rate = moved / elapsed
            left = self.bytes_total - self.bytes_done
            objects_rate = (self.objects_done - self.objects_skipped) / elapsed
            if rate > 0:
                eta = left / rate
            elif objects_rate > 0:
                eta = (self.objects_total - self.objects_done) / objects_rate
            else:
                eta = None
            return {"objects_total": self.objects_total, "objects_done": self.objects_done,
                    "bytes_total": self.bytes_total, "bytes_done": self.bytes_done,
                    "objects_skipped": self.objects_skipped, "retries": self.retries,
                    "rate_bytes_per_s": round(rate, 1), "rate_objects_per_s": round(objects_rate, 1),
                    "eta_s": None if eta is None else round(eta, 1),
                    "elapsed_s": round(elapsed, 2)}


class Mismatch(Exception):
    pass


class Fatal(Exception):
    """Stop everything (e.g. the disk is full)."""


# --- reading one object ------------------------------------------------------------------------

class Source:
    """How the workers read from one catalog."""

    def __init__(self, catalog, range_threshold: int, range_size: int, range_threads: int):
        self.catalog = catalog
        self.kind = type(catalog).__name__
        self.range_threshold = range_threshold
        self.range_size = range_size
        self.range_threads = range_threads

    # Each reader writes the object's bytes into ``fd`` (from offset 0) and returns
    # (size, sha2 of what was written or None when written in ranges, source checksum or None).

    def fetch(self, item: Item, fd: int) -> tuple[int, str | None, str | None]:
        if item.size is not None and item.size > self.range_threshold and self.kind != "PosixCatalog":
            return self._ranged(item, fd)
        return {"IrodsCatalog": self._irods, "HttpCatalog": self._http,
                "PosixCatalog": self._posix}.get(self.kind, self._generic)(item, fd)

    def _irods_open(self, item: Item):
        """A raw read-only descriptor: DATA_OBJ_OPEN straight away (python-irodsclient's ``open``
        adds a buffered wrapper whose set-up and close cost extra LSEEK round trips)."""
        from irods.api_number import api_number
        from irods.data_object import iRODSDataObjectFileRaw
        from irods.message import FileOpenRequest, StringStringMap, iRODSMessage

        from ..catalogs.irods import _translated
        logical = self.catalog.logical_path(item.url)
        session = self.catalog.session
        with _translated(item.url):
            conn = session.pool.get_connection()
            try:
                body = FileOpenRequest(objPath=logical, createMode=0, openFlags=0, offset=0, dataSize=-1,
                                       numThreads=session.numThreads, oprType=0,
                                       KeyValPair_PI=StringStringMap({}))
                conn.send(iRODSMessage("RODS_API_REQ", msg=body, int_info=api_number["DATA_OBJ_OPEN_AN"]))
                desc = conn.recv().int_info
            except BaseException:
                conn.release(destroy=True)
                raise
            return iRODSDataObjectFileRaw(conn, desc)

    def _irods(self, item: Item, fd: int):
        from ..catalogs.irods import _translated
        h = hashlib.sha256()
        n = 0
        raw = self._irods_open(item)
        ok = False
        try:
            with _translated(item.url):
                while item.size is None or n < item.size:
                    want = BLOCK if item.size is None else min(BLOCK, item.size - n)
                    buf = bytearray(want)
                    got = raw.readinto(buf)
                    if not got:
                        break
                    data = bytes(buf[:got]) if got < want else bytes(buf)
                    h.update(data)
                    _write_all(fd, data)
                    n += got
            ok = True
        finally:
            _close_raw(raw, item.url, ok)
        return n, sha2(h.digest()), item.checksum

    def _http(self, item: Item, fd: int):
        from ..catalogs.http import digest_sha2
        response = self.catalog._request("GET", item.url, stream=True)
        h = hashlib.sha256()
        n = 0
        try:
            for data in response.iter_content(BLOCK):
                h.update(data)
                _write_all(fd, data)
                n += len(data)
        except Exception as exc:  # requests' ChunkedEncodingError, ConnectionError...
            raise CatalogUnavailable(f"the connection broke while reading {item.url}: {exc}", item.url) from exc
        finally:
            response.close()
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) != n:
            raise Mismatch(f"{item.url}: the server announced {length} bytes, {n} arrived")
        return n, sha2(h.digest()), item.checksum or digest_sha2(response.headers)

    def _posix(self, item: Item, fd: int):
        """One pass: each block read is hashed and written. The source has no stored checksum to
        compare with, and hashing it a second time would only compare the page cache with
        itself; what is checked instead is that the file did not change while it was read (size
        and modification time from ``fstat`` before and after, and the size the listing gave),
        and that every byte read was written (``_write_all``; the size is checked by the caller).
        The SHA-256 of the bytes read is the one recorded in the journal."""
        h = hashlib.sha256()
        n = 0
        try:
            src = os.open(item.url, os.O_RDONLY)
        except OSError as exc:
            raise self.catalog._error(exc, item.url) from None
        try:
            before = os.fstat(src)
            while n < before.st_size:  # growth while reading shows in the second fstat
                data = os.read(src, min(before.st_size - n, BLOCK))
                if not data:
                    break
                h.update(data)
                _write_all(fd, data)
                n += len(data)
            after = os.fstat(src)
        finally:
            os.close(src)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or n != after.st_size:
            raise Mismatch(f"{item.url} changed while it was copied ({before.st_size} bytes before, "
                           f"{n} read, {after.st_size} after)")
        return n, sha2(h.digest()), item.checksum or _SELF_VERIFIED

    def _generic(self, item: Item, fd: int):
        h = hashlib.sha256()
        n = 0
        with self.catalog.open(item.url) as f:
            for data in iter(lambda: f.read(BLOCK), b""):
                h.update(data)
                _write_all(fd, data)
                n += len(data)
        return n, sha2(h.digest()), item.checksum

    def _ranged(self, item: Item, fd: int):
        size = item.size
        parts = [(start, min(size, start + self.range_size)) for start in range(0, size, self.range_size)]

        def part(bounds):
            start, end = bounds
            if self.kind == "HttpCatalog":
                status, data = self.catalog._get_range(item.url, start, end)
                if status == 200:
                    data = data[start:end]
            elif self.kind == "IrodsCatalog":
                from ..catalogs.irods import _translated
                raw = self._irods_open(item)
                ok = False
                try:
                    with _translated(item.url):
                        raw.seek(start)
                        buf = bytearray(end - start)
                        filled = 0
                        while filled < len(buf):
                            got = raw.readinto(memoryview(buf)[filled:])
                            if not got:
                                break
                            filled += got
                        data = bytes(buf[:filled])
                    ok = True
                finally:
                    _close_raw(raw, item.url, ok)
            else:
                with self.catalog.open(item.url) as f:
                    f.seek(start)
                    data = f.read(end - start)
            if len(data) != end - start:
                raise CatalogUnavailable(f"short read of {item.url} at {start}: {len(data)} of {end - start} "
                                         f"bytes", item.url)
            os.pwrite(fd, data, start)
            return len(data)

        with ThreadPoolExecutor(max_workers=self.range_threads) as pool:
            n = sum(pool.map(part, parts))
        return n, None, item.checksum

    def source_checksum(self, item: Item) -> str | None:
        """The source's checksum where the listing had none (None: only the size can be compared)."""
        if self.kind == "IrodsCatalog":
            return self.catalog.checksum(item.url)
        if self.kind == "PosixCatalog":
            return _file_sha2(item.url)
        if self.kind == "HttpCatalog":
            return self.catalog.stat(item.url).checksum
        try:
            return self.catalog.checksum(item.url)
        except CatalogError:
            return None


def _close_raw(raw, url: str, ok: bool) -> None:
    """Close an iRODS descriptor; after a failure the connection is dropped, not pooled."""
    from ..catalogs.irods import _translated
    if ok:
        with _translated(url):
            raw.close()
        return
    try:
        raw.conn.release(destroy=True)
    except Exception:
        pass


def _file_sha2(path: str) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            data = os.read(fd, BLOCK)
            if not data:
                break
            h.update(data)
    finally:
        os.close(fd)
    return sha2(h.digest())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# --- HTTP: pipelined GETs on one keep-alive connection per worker ------------------------------

class _Pipeline:
    """A batch of small GETs sent at once on one HTTP/1.1 keep-alive connection (pipelining) and
    the responses read in order: one round trip per batch instead of one per object, and none of
    requests' per-request work. Only plain ``http://`` without proxies or session auth takes this
    path; any response that is not a plain 200 with a ``Content-Length`` (or the connection
    closing, or any error) leaves the rest of the batch to the ordinary path (requests, with its
    error handling and retries)."""

    def __init__(self, catalog, netloc: str):
        self.catalog = catalog
        self.host, _, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "80")
        self.port = int(port or 80)
        self.netloc = netloc
        self.sock = None
        self.reader = None
        extra = {k: v for k, v in catalog.session.headers.items()
                 if k.lower() not in ("accept-encoding", "connection", "host")}
        extra["Accept-Encoding"] = "identity"
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in extra.items())

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = self.reader = None

    def _connect(self):
        import socket
        self.sock = socket.create_connection((self.host, self.port), timeout=self.catalog.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb", buffering=1 << 16)

    def get_many(self, paths: list[str]) -> list:
        """(headers, body) per path, None where it must go the ordinary way."""
        out: list = [None] * len(paths)
        i = 0
        for _ in range(3):  # a connection the server closed (keepalive_requests) is opened again
            if i >= len(paths):
                break
            fresh = self.sock is None
            try:
                if fresh:
                    self._connect()
                request = "".join(f"GET {p} HTTP/1.1\r\nHost: {self.netloc}\r\n{self.extra}\r\n"
                                  for p in paths[i:])
                self.sock.sendall(request.encode("latin-1"))
                progressed = False
                while i < len(paths):
                    got = self._response()
                    if got is None:
                        break
                    ok, headers, body, closing = got
                    if ok:
                        out[i] = (headers, body)
                    i += 1
                    progressed = True
                    if closing:
                        break
                if i < len(paths):
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

    def _response(self):
        status = self.reader.readline(65537)
        if not status:
            return None
        parts = status.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError("not an HTTP response")
        code = int(parts[1])
        headers = {}
        while True:
            line = self.reader.readline(65537)
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ValueError("the connection closed in the headers")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length")
        if length is None or not length.isdigit() or "transfer-encoding" in headers:
            raise ValueError("no Content-Length")  # cannot find the next response: give up
        body = self.reader.read(int(length))
        if len(body) != int(length):
            raise ValueError("short body")
        closing = headers.get("connection", "").lower() == "close" or parts[0] == b"HTTP/1.0"
        return code == 200, headers, body, closing


def _http_pipelinable(catalog, items: list[Item]):
    """The connection's ``host:port`` when ``items`` can be pipelined, else None."""
    from urllib.parse import urlsplit
    if catalog.session.auth is not None or not items:
        return None
    netloc = None
    for item in items:
        if item.size is None or item.size > SMALL or not item.url.startswith("http://"):
            return None
        parts = urlsplit(item.url)
        if netloc is None:
            netloc = parts.netloc
        elif parts.netloc != netloc:
            return None
    if "@" in netloc:
        return None
    try:
        import requests.utils
        if catalog.session.trust_env and requests.utils.get_environ_proxies(items[0].url):
            return None
    except Exception:
        return None
    return netloc


class _Prefetched:
    """What a pipelined GET brought: written, hashed and checked as ``Source._http`` would."""

    def __init__(self, headers: dict, body: bytes):
        self.headers, self.body = headers, body

    def write(self, item: Item, fd: int):
        from requests.structures import CaseInsensitiveDict

        from ..catalogs.http import digest_sha2
        _write_all(fd, self.body)
        return (len(self.body), sha2(hashlib.sha256(self.body).digest()),
                item.checksum or digest_sha2(CaseInsensitiveDict(self.headers)))


# --- the transfer ------------------------------------------------------------------------------

def _batches(items: list[Item]) -> list[list[Item]]:
    """Small objects in groups of ``BATCH`` (same folder first: neighbours in the listing), each
    large one alone."""
    out, small = [], []
    for item in items:
        if item.size is not None and item.size <= SMALL:
            small.append(item)
            if len(small) == BATCH:
                out.append(small)
                small = []
        else:
            out.append([item])
    if small:
        out.append(small)
    return out


def transfer(source: Source, items: Iterable[Item], root: Path, journal: Journal, progress: Progress, *,
             threads: int = 16, retries: int = 4, backoff: float = 0.2,
             on_verified: Callable[[Item], None] | None = None) -> dict[str, str]:
    """Fetch ``items`` into ``root`` (keys relative to it); returns failures (URL -> reason).

    Small objects go to the workers in batches (fewer hand-offs between threads); over HTTP a
    batch is fetched with pipelined GETs on the worker's own connection (``_Pipeline``), then
    each object is written, verified and renamed one by one exactly as on the ordinary path,
    which also takes over any object the pipeline could not bring, and every retry."""
    items = list(items)
    if source.kind == "PosixCatalog":  # bound by system calls and the GIL: more threads only contend
        threads = min(threads, POSIX_THREADS)
    failures: dict[str, str] = {}
    stop = threading.Event()
    fatal: list[BaseException] = []
    pid = os.getpid()
    local = threading.local()
    pipelines: list[_Pipeline] = []
    pipelines_lock = threading.Lock()

    # Leaf folders that do not exist yet and hold only small objects are filled under a temporary
    # name (``<folder>.part-<pid>``) and renamed into place once every object in them is verified:
    # one rename per folder instead of one per object, and nothing under a final path before it
    # is verified. Every other object goes through ``<final>.part-<pid>`` and its own rename.
    root_text = str(root)
    by_folder: dict[str, list[Item]] = {}
    for item in items:
        by_folder.setdefault(os.path.dirname(item.key), []).append(item)
    ancestors: set[str] = set()
    for folder in by_folder:
        while folder:
            folder = os.path.dirname(folder)
            ancestors.add(folder)
    whole: dict[str, list[Item]] = {}
    singles: list[Item] = []
    for folder, its in by_folder.items():
        if (folder and folder not in ancestors and len(its) <= WHOLE_FOLDER
                and all(i.size is not None and i.size <= SMALL for i in its)
                and not os.path.lexists(os.path.join(root_text, folder))):
            whole[folder] = its
        else:
            singles.extend(its)
    # Every folder once, here, before the workers start (no lock, no repeated makedirs).
    made = set()
    for folder in sorted(set(os.path.dirname(i.key) for i in singles) | {os.path.dirname(f) for f in whole}):
        path = os.path.join(root_text, folder) if folder else root_text
        if path not in made:
            os.makedirs(path, exist_ok=True)
            made.add(path)

    def one(item: Item, prefetched: _Prefetched | None = None, lines: list | None = None,
            direct: str | None = None):
        """Fetch, verify and put one object in place; ``direct``: the path to write in a folder
        that is renamed into place later (no rename of its own). Verified: ``(item, line)``
        appended to ``lines`` (or the line recorded at once when ``lines`` is None)."""
        if stop.is_set():
            return
        if direct is not None:
            final = tmp = direct
        else:
            final = os.path.join(root_text, item.key)
            tmp = final + f".part-{pid}"
        last = "not attempted"
        for attempt in range(1, retries + 1):
            if stop.is_set():
                return
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    if prefetched is not None:
                        n, got, expected = prefetched.write(item, fd)
                        prefetched = None  # a retry fetches again
                    else:
                        with progress.lock:
                            progress.fetched += 1
                        n, got, expected = source.fetch(item, fd)
                finally:
                    os.close(fd)
                if got is None:  # written in ranges: hash the file
                    got = _file_sha2(tmp)
                if item.size is not None and n != item.size:
                    raise Mismatch(f"{item.url}: {n} bytes arrived, the source lists {item.size}")
                if expected is _SELF_VERIFIED:  # POSIX: one pass, checked in Source._posix
                    expected = got
                elif expected is None and source.kind != "HttpCatalog":  # HTTP without a digest: the size
                    expected = source.source_checksum(item)
                if expected is not None and expected != got:
                    raise Mismatch(f"checksum mismatch for {item.url}: the source records {expected}, "
                                   f"the bytes received hash to {got}")
                if tmp != final:
                    os.replace(tmp, final)
                if lines is None:
                    journal.record(item.key, n, got)
                else:  # written for the whole batch at once (a kill before: fetched again)
                    lines.append((item, Journal.line(item.key, n, got)))
                with progress.lock:
                    progress.objects_done += 1
                    progress.bytes_done += n
                if on_verified:
                    on_verified(item)
                return
            except OSError as exc:
                _remove(tmp)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    fatal.append(Fatal(f"the disk is full (or the quota reached) while writing {final}: {exc}"))
                    stop.set()
                    return
                if isinstance(exc, CatalogError) and not isinstance(exc, CatalogUnavailable):
                    last = str(exc)
                    break
                last = f"{type(exc).__name__}: {exc}"
            except Mismatch as exc:
                _remove(tmp)
                last = str(exc)
            except CatalogUnavailable as exc:
                _remove(tmp)
                last = str(exc)
            except CatalogError as exc:  # NotFound, PermissionDenied...: retrying will not help
                _remove(tmp)
                last = str(exc)
                break
            except Exception as exc:  # a client library's own error: treat as transient
                _remove(tmp)
                last = f"{type(exc).__name__}: {exc}"
            if attempt < retries:
                with progress.lock:
                    progress.retries += 1
                time.sleep(backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))
        failures[item.url] = f"{last} (after {attempt} attempt{'s' if attempt > 1 else ''})"

    def prefetch(group: list[Item]) -> list:
        """HTTP: the group's bodies by pipelined GETs (None where the ordinary path must go)."""
        fetched: list = [None] * len(group)
        if source.kind != "HttpCatalog" or len(group) < 2:
            return fetched
        netloc = _http_pipelinable(source.catalog, group)
        if netloc is None:
            return fetched
        pipe = getattr(local, "pipe", None)
        if pipe is None or pipe.netloc != netloc:
            if pipe is not None:
                pipe.close()
            pipe = local.pipe = _Pipeline(source.catalog, netloc)
            with pipelines_lock:
                pipelines.append(pipe)
        from urllib.parse import urlsplit
        paths = []
        for item in group:
            parts = urlsplit(item.url)
            paths.append((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        fetched = []
        for start in range(0, len(paths), BATCH):  # bounded: neither side blocks on full buffers
            fetched.extend(pipe.get_many(paths[start:start + BATCH]))
        with progress.lock:
            progress.fetched += sum(1 for f in fetched if f is not None)
        return fetched

    def batch(group: list[Item]):
        if stop.is_set():
            return
        started = time.monotonic()
        fetched = prefetch(group)
        lines: list = []
        try:
            for item, got in zip(group, fetched):
                one(item, None if got is None else _Prefetched(*got), lines)
                if lines and time.monotonic() - started > 0.25:  # a slow batch: record as it goes
                    journal.write(b"".join(line for _, line in lines))
                    lines.clear()
                    started = time.monotonic()
        finally:
            if lines:
                journal.write(b"".join(line for _, line in lines))

    def folder_whole(folder: str, group: list[Item]):
        if stop.is_set():
            return
        final_dir = os.path.join(root_text, folder)
        part_dir = final_dir + f".part-{pid}"
        try:
            if os.path.lexists(part_dir):
                import shutil
                shutil.rmtree(part_dir)
            os.mkdir(part_dir)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                fatal.append(Fatal(f"the disk is full (or the quota reached) while writing {final_dir}: {exc}"))
                stop.set()
                return
            os.makedirs(final_dir, exist_ok=True)  # the ordinary way, one object at a time
            return batch(group)
        done: list = []
        try:
            fetched = prefetch(group)
            for item, got in zip(group, fetched):
                one(item, None if got is None else _Prefetched(*got), done,
                    direct=os.path.join(part_dir, os.path.basename(item.key)))
            if stop.is_set():
                done = []
                return
            if len(done) == len(group):
                os.rename(part_dir, final_dir)  # every object in it verified
                part_dir = None
            else:  # some failed: the verified ones go into place one by one, and are kept
                os.makedirs(final_dir, exist_ok=True)
                for item, _ in done:
                    os.rename(os.path.join(part_dir, os.path.basename(item.key)),
                              os.path.join(root_text, item.key))
        except OSError as exc:
            for item in group:
                failures.setdefault(item.url, f"{type(exc).__name__}: {exc}")
            with progress.lock:
                progress.objects_done -= len(done)
                progress.bytes_done -= sum(i.size or 0 for i, _ in done)
            done = []
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                fatal.append(Fatal(f"the disk is full (or the quota reached) while writing {final_dir}: {exc}"))
                stop.set()
        finally:
            if part_dir is not None and os.path.lexists(part_dir):
                import shutil
                shutil.rmtree(part_dir, ignore_errors=True)
            if done:
                journal.write(b"".join(line for _, line in done))

    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stage") as pool:
            futures = [pool.submit(folder_whole, folder, group) for folder, group in whole.items()]
            futures += [pool.submit(batch, group) for group in _batches(singles)]
            for future in futures:
                future.result()
    finally:
        for pipe in pipelines:
            pipe.close()
    if fatal:
        raise fatal[0]
    return failures


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_doc(path: Path, data: bytes) -> None:
    """A small file written under a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".part-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


__all__ = ["Journal", "Progress", "Source", "transfer", "write_doc", "io"]
