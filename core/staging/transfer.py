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
object, GIL contention among 16 threads copying local files, and Python's work per object):

* Small objects go to a worker in groups: a whole leaf folder that does not exist yet, or
  ``BATCH`` objects. A new leaf folder is filled under ``<folder>.part-<pid>`` and renamed into
  place once every object in it is verified (one rename per folder); if any object in it fails,
  the verified ones are renamed into place one by one and kept. A killed run leaves only
  ``.part-`` files and folders, which the next run removes. A folder's objects are recorded in
  the journal in one record after its rename (a kill in between only means those objects are
  fetched again).
* A folder filled whole is written by a tight loop (``_copy_local_files`` from the file system,
  ``_store_bodies`` from pipelined GETs): per object the fewest system calls and Python steps
  that still verify it; whatever that loop cannot take (an error, a size that differs, a digest
  to compare) goes the ordinary way, object by object, with retries and error messages.
* HTTP: a group is fetched by pipelined GETs on one keep-alive connection per worker
  (``http_pipeline.Pipeline``); each body is checked (its size against the listing's and the
  ``Content-Length``, and the server's digest when it states one) as on the ordinary path.
* POSIX: one pass, read + hash + write; folders filled whole are copied by worker processes
  (``local_copy.LocalCopyPool``, one per CPU), the rest by at most ``POSIX_THREADS`` threads. There is no
  checksum stored at the source, so "verified" means: the bytes written are the bytes read
  (every ``write`` complete, size equal to the listing's), the file did not change while it was
  read (``fstat`` size and mtime before and after), and the journal records the SHA-256 of those
  bytes. Hashing the source a second time, as before, only compared the page cache with itself.
* A full disk (``ENOSPC``/``EDQUOT``, also when a client library wraps it) stops every worker:
  nothing is retried, the partial files go, the dataset is not marked complete.
* Writes stay inside ``root``: every key is checked once before anything is written (a relative
  path of plain names, ``catalogs.names.check_key``), folders are made one by one and an
  existing one must be a real folder of the user's, not a symbolic link (``private.make_folders``,
  once per folder), and files are created with ``O_NOFOLLOW``; a rename replaces a link, never
  follows it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import hashlib
import io
import json
import os
import random
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..catalogs.base import CatalogError, CatalogUnavailable
from ..catalogs.names import check_key, safe_key
from .errors import UntrustedPath
from .http_pipeline import Pipeline, Response, pipelinable, request_target
from .local_copy import MIN_FILES, LocalCopyPool, copy_files, folder_record, worker_count
from .plan import Item
from .private import make_folders, open_own

BLOCK = 1 << 20
BATCH = 64  # small objects handed to one worker at once (and pipelined over HTTP)
SMALL = 1 << 20  # "small": read in one piece
WRITING = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC  # a file of the staged copy
POSIX_THREADS = 2  # local copies: measured fastest with 1-2 threads (10 000 small files, 2 cores)
WHOLE_FOLDER = 4096  # at most this many objects in a folder filled whole and renamed into place
_SELF_VERIFIED = object()  # POSIX: the checksum is that of the bytes read (see Source._posix)


def sha2(digest: bytes) -> str:
    return "sha2:" + base64.b64encode(digest).decode()


# --- the journal -------------------------------------------------------------------------------

class Journal:
    """Append-only JSON lines: one per verified object, ``{"key", "size", "sha2"}``, or one per
    folder filled whole, ``{"dir": folder, "objects": [[name, size, sha2], ...]}`` (one record
    written after the folder's rename instead of one line per object).

    A line is written (``os.write`` on an ``O_APPEND`` descriptor) as soon as the object is
    renamed into place, so it survives the process being killed (even ``kill -9``); it is made
    durable against a machine crash by ``fsync``, after every line (``fsync="each"``) or at most
    ``fsync_interval`` seconds later (``"batch"``, the default: group commit). A line lost in a
    crash only means that object is fetched again."""

    def __init__(self, path: Path, fsync: str = "batch", fsync_interval: float = 0.2):
        self.path = Path(path)
        self.fd = open_own(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
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
            with os.fdopen(open_own(path, os.O_RDONLY), "rb") as f:  # the user's own, not a link
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(record, dict):
                        continue
                    if "key" in record:
                        out[record["key"]] = record
                    elif isinstance(record.get("dir"), str) and isinstance(record.get("objects"), list):
                        prefix = record["dir"] + "/" if record["dir"] else ""
                        for name, size, checksum in record["objects"]:
                            out[prefix + name] = {"key": prefix + name, "size": size, "sha2": checksum}
        except FileNotFoundError:
            pass
        return out

    @staticmethod
    def line(key: str, size: int, checksum: str) -> bytes:
        # what json.dumps({"key": key, "size": size, "sha2": checksum}) gives, with less work
        return f'{{"key": {json.dumps(key)}, "size": {int(size)}, "sha2": {json.dumps(checksum)}}}\n'.encode()

    folder_line = staticmethod(folder_record)

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
        if self.fd is None:
            return
        self.closed.set()
        if self.thread:
            self.thread.join()
        fd, self.fd = self.fd, None
        try:
            with self.lock:
                dirty = self.dirty
            if dirty:  # "each" synced every line already
                os.fsync(fd)
        finally:
            os.close(fd)


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

    def add(self, objects: int = 0, nbytes: int = 0, fetched: int = 0, retries: int = 0) -> None:
        """Count work done (negative numbers take back what a failed folder had counted)."""
        with self.lock:
            self.objects_done += objects
            self.bytes_done += nbytes
            self.fetched += fetched
            self.retries += retries

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
        """A raw read-only descriptor (``IrodsCatalog.open_raw``: no stat, no buffered wrapper)."""
        return self.catalog.open_raw(item.url)

    def _irods(self, item: Item, fd: int):
        from ..catalogs.irods import _translated
        h = hashlib.sha256()
        n = 0
        raw = self._irods_open(item)
        ok = False
        try:
            while item.size is None or n < item.size:
                want = BLOCK if item.size is None else min(BLOCK, item.size - n)
                buf = bytearray(want)
                with _translated(item.url):  # iRODS errors only: a full disk below stays an OSError
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
            chunks = response.iter_content(BLOCK)
            while True:
                try:
                    data = next(chunks)
                except StopIteration:
                    break
                except Exception as exc:  # requests' ChunkedEncodingError, ConnectionError...
                    raise CatalogUnavailable(f"the connection broke while reading {item.url}: {exc}",
                                             item.url) from exc
                h.update(data)
                _write_all(fd, data)  # a full disk stays an OSError (ENOSPC): it stops the transfer
                n += len(data)
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


def _copy_local_files(group: list[Item], prefix: int, part_dir: str, done: list, progress: Progress) -> list:
    """Copy small local files into the folder ``part_dir`` (a new one, renamed into place by the
    caller once everything in it is verified) by ``local_copy.copy_files``. ``(item, size,
    sha2)`` of each verified file is appended to ``done``. Returns ``(item, None)`` for every file
    that path did not take (a different size, a file that changed, an error): the ordinary path
    fetches those, with its retries and error messages. An error writing the copies (the disk
    full) is raised."""
    copied, left, error = copy_files([i.url for i in group], part_dir, [i.key[prefix:] for i in group],
                                     [i.size for i in group])
    _add_copied(group, copied, done, progress)
    if error is not None:
        raise error
    return [(group[index], None) for index in left]


def _add_copied(group: list[Item], copied: list, done: list, progress: Progress) -> None:
    nbytes = 0
    for index, digest in copied:
        item = group[index]
        done.append((item, item.size, digest))
        nbytes += item.size
    progress.add(len(copied), nbytes, fetched=len(copied))


def _close_raw(raw, url: str, ok: bool) -> None:
    """Close an iRODS descriptor; after a failure the connection is dropped, not pooled."""
    from ..catalogs.irods import IrodsCatalog
    IrodsCatalog.close_raw(raw, url, ok)


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


# --- HTTP: what pipelined GETs brought (``http_pipeline``) -------------------------------------

class _Prefetched:
    """What a pipelined GET brought: written, hashed and checked as ``Source._http`` would."""

    def __init__(self, response: Response):
        self.response = response

    def write(self, item: Item, fd: int):
        from requests.structures import CaseInsensitiveDict

        from ..catalogs.http import digest_sha2
        body = self.response.body
        _write_all(fd, body)
        stated = digest_sha2(CaseInsensitiveDict(self.response.headers())) if self.response.states_digest() else None
        return len(body), sha2(hashlib.sha256(body).digest()), item.checksum or stated


def _store_bodies(fetched: list, prefix: int, part_dir: str, done: list, progress: Progress,
                  stop: threading.Event) -> list:
    """``_copy_local_files`` for bodies that pipelined GETs brought: each one whose size is the
    listing's (and the ``Content-Length``, which the pipeline read it by) and whose response
    states no digest of its own is written to a new file in ``part_dir`` with one ``write``
    and recorded in ``done`` with its SHA-256. The rest (no body, another size, a digest to
    compare) is returned for the ordinary path, which checks them as ``Source._http`` does."""
    left = []
    sha256, b64 = hashlib.sha256, binascii.b2a_base64  # base64.b64encode without its Python frame
    open_, write, close = os.open, os.write, os.close
    count = nbytes = 0
    for item, response in fetched:
        if response is None or len(response.body) != item.size or item.checksum or response.states_digest():
            left.append((item, response))
            continue
        body = response.body
        dst = open_(part_dir + item.key[prefix:], WRITING, 0o600)
        try:
            written = write(dst, body)
        finally:
            close(dst)
        if written != len(body):
            left.append((item, None))
            continue
        done.append((item, written, "sha2:" + b64(sha256(body).digest(), newline=False).decode()))
        count += 1
        nbytes += written
        if count == 256:
            progress.add(count, nbytes)
            count = nbytes = 0
            if stop.is_set():
                break
    progress.add(count, nbytes)
    return left


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


def _chunks(folders: list, parts: int) -> list[list]:
    """``folders`` in about ``parts`` runs of neighbours with about as many objects each."""
    total = sum(len(group) for _, group in folders)
    size = min(2048, max(1, total // max(1, parts)))  # at most ~2000 objects: progress, and a stop
    out, run, n = [], [], 0
    for folder in folders:
        run.append(folder)
        n += len(folder[1])
        if n >= size:
            out.append(run)
            run, n = [], 0
    if run:
        out.append(run)
    return out


def transfer(source: Source, items: Iterable[Item], root: Path, journal: Journal, progress: Progress, *,
             threads: int = 16, retries: int = 4, backoff: float = 0.2,
             on_verified: Callable[[Item], None] | None = None) -> dict[str, str]:
    """Fetch ``items`` into ``root`` (keys relative to it); returns failures (URL -> reason).

    Small objects go to the workers in batches (fewer hand-offs between threads); over HTTP a
    batch is fetched with pipelined GETs on the worker's own connection (``http_pipeline.Pipeline``), then
    each object is written, verified and renamed one by one exactly as on the ordinary path,
    which also takes over any object the pipeline could not bring, and every retry."""
    items = list(items)
    for item in items:  # once, before anything is written: every key stays inside root
        if not safe_key(item.key):
            check_key(item.key, item.url, "staged path")
    root_info = os.lstat(root)
    if not stat.S_ISDIR(root_info.st_mode):
        raise UntrustedPath(f"refused {root}: where the copy goes is not a folder (a symbolic link?)", root)
    if source.kind == "PosixCatalog":  # bound by system calls and the GIL: more threads only contend
        threads = min(threads, POSIX_THREADS)
    failures: dict[str, str] = {}
    stop = threading.Event()
    fatal: list[BaseException] = []
    pid = os.getpid()
    local = threading.local()
    pipelines: list[Pipeline] = []
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
    # Every folder once, here, before the workers start (no lock, no repeated makedirs), each a
    # real folder (an existing one too), never a link.
    made: set[str] = set()
    for folder in sorted(set(os.path.dirname(i.key) for i in singles) | {os.path.dirname(f) for f in whole}):
        make_folders(root_text, folder, made)

    def one(item: Item, prefetched: _Prefetched | None = None, lines: list | None = None,
            direct: str | None = None):
        """Fetch, verify and put one object in place; ``direct``: the path to write in a folder
        that is renamed into place later (no rename of its own). Verified: ``(item, size, sha2)``
        appended to ``lines`` (or recorded in the journal at once when ``lines`` is None)."""
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
                fd = os.open(tmp, WRITING, 0o600)
                try:
                    if prefetched is not None:
                        n, got, expected = prefetched.write(item, fd)
                        prefetched = None  # a retry fetches again
                    else:
                        progress.add(fetched=1)
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
                    lines.append((item, n, got))
                progress.add(1, n)
                if on_verified:
                    on_verified(item)
                return
            except Exception as exc:
                _remove(tmp)
                full = _disk_full(exc)
                if full is not None:
                    fatal.append(Fatal(f"the disk is full (or the quota reached) while writing {final}: {full}"))
                    stop.set()
                    return
                if isinstance(exc, (Mismatch, CatalogUnavailable)):
                    last = str(exc)
                elif isinstance(exc, CatalogError):  # NotFound, PermissionDenied...: retrying will not help
                    last = str(exc)
                    break
                else:  # an OSError, a client library's own error: treat as transient
                    last = f"{type(exc).__name__}: {exc}"
            if attempt < retries:
                progress.add(retries=1)
                time.sleep(backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))
        failures[item.url] = f"{last} (after {attempt} attempt{'s' if attempt > 1 else ''})"

    def prefetch(group: list[Item]) -> list:
        """HTTP: the group's bodies by pipelined GETs (None where the ordinary path must go)."""
        fetched: list = [None] * len(group)
        if source.kind != "HttpCatalog" or len(group) < 2:
            return fetched
        if any(item.size is None or item.size > SMALL for item in group):
            return fetched
        netloc = pipelinable(source.catalog, (item.url for item in group))
        if netloc is None:
            return fetched
        pipe = getattr(local, "pipe", None)
        if pipe is None or pipe.netloc != netloc:
            if pipe is not None:
                pipe.close()
            pipe = local.pipe = Pipeline(source.catalog, netloc)
            with pipelines_lock:
                pipelines.append(pipe)
        paths = [request_target(item.url) for item in group]
        fetched = []
        for start in range(0, len(paths), BATCH):  # bounded: neither side blocks on full buffers
            fetched.extend(pipe.get_many(paths[start:start + BATCH]))
        progress.add(fetched=sum(1 for f in fetched if f is not None))
        return fetched

    def batch(group: list[Item]):
        if stop.is_set():
            return
        started = time.monotonic()
        fetched = prefetch(group)
        lines: list = []
        try:
            for item, got in zip(group, fetched):
                one(item, None if got is None else _Prefetched(got), lines)
                if lines and time.monotonic() - started > 0.25:  # a slow batch: record as it goes
                    journal.write(b"".join(Journal.line(i.key, n, got) for i, n, got in lines))
                    lines.clear()
                    started = time.monotonic()
        finally:
            if lines:
                journal.write(b"".join(Journal.line(i.key, n, got) for i, n, got in lines))

    def folder_whole(folder: str, group: list[Item], answer: list | None = None):
        """Fill a new folder whole; ``answer``: what a worker process did of it already
        (``local_copy.fill_folders``: "partial" or "error"), taken from there (and its
        ``.part-`` folder removed, even once the transfer is stopping)."""
        if stop.is_set() and answer is None:
            return
        final_dir = os.path.join(root_text, folder)
        part_dir = final_dir + f".part-{pid}"
        if answer is None:
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
                make_folders(root_text, folder)  # the ordinary way, one object at a time
                return batch(group)
        done: list = []
        prefix = len(folder) + 1
        try:
            # The fast paths first; what they leave takes the ordinary one.
            if answer is not None and answer[0] == "error":
                raise OSError(*answer[1])
            if answer is not None:  # "partial": the worker copied and verified some
                _add_copied(group, answer[1], done, progress)
                fetched = [(group[index], None) for index in answer[2]]
            elif source.kind == "PosixCatalog":
                fetched = _copy_local_files(group, prefix, part_dir + "/", done, progress)
            elif source.kind == "HttpCatalog":
                fetched = _store_bodies(list(zip(group, prefetch(group))), prefix, part_dir + "/", done,
                                        progress, stop)
            else:
                fetched = zip(group, prefetch(group))
            for item, got in fetched:
                one(item, None if got is None else _Prefetched(got), done,
                    direct=os.path.join(part_dir, item.key[prefix:]))
            if stop.is_set():
                done = []
                return
            if len(done) == len(group):
                os.rename(part_dir, final_dir)  # every object in it verified
                part_dir = None
            else:  # some failed: the verified ones go into place one by one, and are kept
                make_folders(root_text, folder)
                for item, _, _ in done:
                    os.rename(os.path.join(part_dir, item.key[prefix:]), os.path.join(root_text, item.key))
        except OSError as exc:
            for item in group:
                failures.setdefault(item.url, f"{type(exc).__name__}: {exc}")
            progress.add(-len(done), -sum(n for _, n, _ in done))
            done = []
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                fatal.append(Fatal(f"the disk is full (or the quota reached) while writing {final_dir}: {exc}"))
                stop.set()
        finally:
            if part_dir is not None and os.path.lexists(part_dir):
                import shutil
                shutil.rmtree(part_dir, ignore_errors=True)
            if done:
                journal.write(Journal.folder_line(folder, [(i.key[prefix:], n, got) for i, n, got in done]))

    def folders_in_worker(chunk: list[tuple[str, list[Item]]]):
        """Several new local folders filled whole by a worker process (``local_copy``): it makes,
        fills, verifies and renames each; here their journal records are written (after the
        renames) and whatever it could not finish is taken over by ``folder_whole``."""
        if stop.is_set():
            return
        jobs = []
        for folder, group in chunk:
            final_dir = os.path.join(root_text, folder)
            prefix = len(folder) + 1
            jobs.append([f"{final_dir}.part-{pid}", final_dir, folder, [i.key[prefix:] for i in group],
                         [i.size for i in group], [i.url for i in group]])
        answers = local_pool.fill(jobs)
        records, count, nbytes, rest = [], 0, 0, []
        for (folder, group), answer in zip(chunk, answers):
            if answer[0] == "renamed":
                records.append(answer[1])
                count += len(group)
                nbytes += sum(i.size for i in group)
            else:
                rest.append((folder, group, answer))
        if records:
            try:
                journal.write("".join(records).encode())
                progress.add(count, nbytes, fetched=count)
            except OSError as exc:  # the journal's disk full: the folders are there, not recorded
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    fatal.append(Fatal(f"the disk is full (or the quota reached) while writing under {root}: {exc}"))
                    stop.set()
                for (folder, group), answer in zip(chunk, answers):
                    if answer[0] == "renamed":
                        for item in group:
                            failures.setdefault(item.url, f"{type(exc).__name__}: {exc}")
        for folder, group, answer in rest:
            if answer[0] == "unmade":
                if answer[1][0] in (errno.ENOSPC, errno.EDQUOT):
                    fatal.append(Fatal(f"the disk is full (or the quota reached) while writing "
                                       f"{os.path.join(root_text, folder)}: {answer[1][1]}"))
                    stop.set()
                    return
                make_folders(root_text, folder)
                guarded(batch, group)
            elif answer[0] == "skipped":
                guarded(folder_whole, group, folder)
            else:
                guarded(functools.partial(folder_whole, answer=answer), group, folder)

    def guarded(work: Callable, group: list[Item], *args):
        """A worker's task; an error outside any one object's handling (the journal's disk full)
        stops the transfer (ENOSPC) or fails the group's objects, never the whole pool silently."""
        try:
            work(*args, group)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                fatal.append(Fatal(f"the disk is full (or the quota reached) while writing under {root}: {exc}"))
                stop.set()
            for item in group:
                failures.setdefault(item.url, f"{type(exc).__name__}: {exc}")

    # Local files in folders filled whole are copied by worker processes (``local_copy``): one
    # interpreter per CPU instead of threads taking turns at one. The threads here then only
    # hand folders over, rename and record them: two per worker keep every worker busy.
    local_pool = None
    if source.kind == "PosixCatalog" and sum(len(group) for group in whole.values()) >= MIN_FILES:
        local_pool = LocalCopyPool(worker_count())
        threads = len(local_pool) + 1  # one more: a chunk's answer is read while both work
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stage") as pool:
            if local_pool:
                # Chunks of folders, several per worker so that the workers finish together.
                chunks = _chunks(list(whole.items()), 8 * len(local_pool))
                futures = [pool.submit(folders_in_worker, chunk) for chunk in chunks]
            else:
                futures = [pool.submit(guarded, folder_whole, group, folder) for folder, group in whole.items()]
            futures += [pool.submit(guarded, batch, group) for group in _batches(singles)]
            for future in futures:
                future.result()
    finally:
        for pipe in pipelines:
            pipe.close()
        if local_pool is not None:
            local_pool.close()
    if fatal:
        raise fatal[0]
    return failures


def _disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT error behind ``exc`` (itself, or what a client library wrapped), if any."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_doc(root: Path, key: str, data: bytes) -> None:
    """A small file ``root/key`` (a checked key, its folders made as ``transfer`` makes them)
    written under a temporary name, then renamed."""
    check_key(key, f"{root} (a document of the staged copy)", "staged path")
    folder, _, name = key.rpartition("/")
    path = os.path.join(make_folders(str(root), folder), name)
    tmp = f"{path}.part-{os.getpid()}"
    try:
        with os.fdopen(os.open(tmp, WRITING, 0o600), "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


__all__ = ["Journal", "Progress", "Source", "transfer", "write_doc", "io"]
