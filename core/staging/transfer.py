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

    def record(self, key: str, size: int, checksum: str) -> None:
        line = (json.dumps({"key": key, "size": size, "sha2": checksum}) + "\n").encode()
        with self.lock:
            os.write(self.fd, line)
            if self.fsync == "each":
                os.fsync(self.fd)
            else:
                self.dirty = True

    def _sync_loop(self):
        while not self.closed.wait(self.interval):
            self._sync()

    def _sync(self):
        with self.lock:
            if self.dirty:
                os.fsync(self.fd)
                self.dirty = False

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
        h = hashlib.sha256()
        n = 0
        try:
            src = os.open(item.url, os.O_RDONLY)
        except OSError as exc:
            raise self.catalog._error(exc, item.url) from None
        try:
            while True:
                data = os.read(src, BLOCK)
                if not data:
                    break
                h.update(data)
                _write_all(fd, data)
                n += len(data)
        finally:
            os.close(src)
        return n, sha2(h.digest()), item.checksum

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


# --- the transfer ------------------------------------------------------------------------------

def transfer(source: Source, items: Iterable[Item], root: Path, journal: Journal, progress: Progress, *,
             threads: int = 16, retries: int = 4, backoff: float = 0.2,
             on_verified: Callable[[Item], None] | None = None) -> dict[str, str]:
    """Fetch ``items`` into ``root`` (keys relative to it); returns failures (URL -> reason)."""
    failures: dict[str, str] = {}
    made: set[str] = set()
    made_lock = threading.Lock()
    stop = threading.Event()
    fatal: list[BaseException] = []
    pid = os.getpid()

    def ensure_dir(path: Path):
        parent = str(path.parent)
        if parent in made:
            return
        with made_lock:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)

    def one(item: Item):
        if stop.is_set():
            return
        final = root / item.key
        tmp = final.with_name(final.name + f".part-{pid}")
        ensure_dir(final)
        last = "not attempted"
        for attempt in range(1, retries + 1):
            if stop.is_set():
                return
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    with progress.lock:
                        progress.fetched += 1
                    n, got, expected = source.fetch(item, fd)
                finally:
                    os.close(fd)
                if got is None:  # written in ranges: hash the file
                    got = _file_sha2(str(tmp))
                if item.size is not None and n != item.size:
                    raise Mismatch(f"{item.url}: {n} bytes arrived, the source lists {item.size}")
                if expected is None and source.kind != "HttpCatalog":  # HTTP without a digest: the size
                    expected = source.source_checksum(item)
                if expected is not None and expected != got:
                    raise Mismatch(f"checksum mismatch for {item.url}: the source records {expected}, "
                                   f"the bytes received hash to {got}")
                os.replace(tmp, final)
                journal.record(item.key, n, got)
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

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stage") as pool:
        for future in [pool.submit(one, item) for item in items]:
            future.result()
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
