"""A catalog over the local (or mounted) file system: ``file:///abs/path`` addresses.

* Addresses are ``file:///abs/path`` (``file://localhost/abs/path`` too), percent-encoded where
  needed, or plain absolute paths. Refused before touching the disk (``InvalidPath``): relative
  paths, ``.``/``..`` segments, NUL bytes, paths that are not UTF-8, a name longer than 255 bytes
  or a path longer than 4096 bytes (Linux's NAME_MAX and PATH_MAX).
* The operating system decides who may read what: ``EACCES``/``EPERM`` become
  ``PermissionDenied``, a missing path ``NotFound``.
* Metadata are the extended attributes in the ``user.`` namespace, without the prefix
  (``setfattr -n user.rembi:biosample.organism -v "Mus musculus" x.ome.zarr`` gives
  ``{"rembi:biosample.organism": [("Mus musculus", "")]}``). Units, which file systems do not
  have, may be given in a companion attribute ``user.<key>@units`` (``user.pixel_size`` = ``0.5``
  and ``user.pixel_size@units`` = ``um`` give ``{"pixel_size": [("0.5", "um")]}``), as iRODS AVUs.
* ``search`` walks the tree below ``under`` (or the catalog's ``root``), without following
  symbolic links, without descending into Zarr hierarchies (their chunks carry no metadata), and
  stops with ``SearchLimitExceeded`` after ``search_limit`` entries, so that a search is bounded.
  A value with ``%`` matches like SQL LIKE (``%`` any run, ``_`` one character), as in iRODS.
* ``checksum`` is computed (SHA-256 of the content) and given in the iRODS form
  ``sha2:<base64>``, so that it compares with iRODS checksums.
* A directory holding an OME-Zarr image (``.zattrs`` or ``zarr.json`` with ``multiscales``) is
  listed with kind ``"image"`` (``recognise_images=False`` turns that off).
* Names on disk that are not UTF-8 are listed with a readable ``name`` (undecodable bytes as
  ``\\xNN``) and a URL with the raw bytes percent-encoded; every operation on such a URL is
  refused with ``InvalidPath``, as everywhere in this interface.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import re
import stat as st
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import BinaryIO
from urllib.parse import quote, unquote_to_bytes

from .base import Catalog, CatalogError, Entry, InvalidPath, NotFound, PermissionDenied

NAME_MAX = 255
PATH_MAX = 4096
ZARR_MARKERS = (".zgroup", ".zattrs", ".zarray", "zarr.json")
UNITS_SUFFIX = "@units"


class SearchLimitExceeded(CatalogError):
    """A search visited ``limit`` entries without finishing; narrow it with ``under=``."""


def sha2_of_file(f: BinaryIO, block: int = 1 << 20) -> str:
    """``sha2:<base64 SHA-256>`` of a file object's remaining content (iRODS's checksum form)."""
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(block), b""):
        h.update(chunk)
    return "sha2:" + base64.b64encode(h.digest()).decode()


def like(pattern: str) -> re.Pattern | None:
    """The regular expression for an iRODS-style LIKE value (``%`` and ``_``), or None when the
    value has no ``%`` and must match exactly."""
    if "%" not in pattern:
        return None
    parts = []
    for ch in pattern:
        parts.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


class PosixCatalog(Catalog):
    scheme = "file"

    def __init__(self, root: str | os.PathLike | None = None, *, recognise_images: bool = True,
                 search_limit: int = 100_000):
        """``root``: where ``search`` looks when no ``under`` is given (no default: a search of a
        whole file system is refused)."""
        self.root = os.fspath(root) if root is not None else None
        self.recognise_images = recognise_images
        self.search_limit = search_limit

    # --- addresses -----------------------------------------------------------------------------

    def local_path(self, address: str | bytes | os.PathLike) -> str:
        """The absolute local path of an address, after the checks listed in the module's doc."""
        if isinstance(address, os.PathLike):
            address = os.fspath(address)
        shown = address if isinstance(address, str) else repr(address)
        if isinstance(address, bytes):
            raw = address
        elif isinstance(address, str):
            if address.startswith("file:"):
                rest = address[len("file:"):]
                if rest.startswith("//"):
                    host, slash, rest = rest[2:].partition("/")
                    if host not in ("", "localhost"):
                        raise InvalidPath(f"file:// addresses must be local (no host {host!r}): {shown}",
                                          shown)
                    rest = slash + rest
                if "?" in rest or "#" in rest:
                    raise InvalidPath(f"a file:// address has no query or fragment "
                                      f"(percent-encode '?' and '#' in names): {shown}", shown)
                raw = unquote_to_bytes(rest)
            elif "://" in address:
                raise InvalidPath(f"not a file:// address: {shown}", shown)
            else:
                try:
                    raw = address.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates: undecodable bytes from os.listdir
                    raise InvalidPath(f"path is not valid UTF-8: {shown!r}", shown) from None
        else:
            raise InvalidPath(f"not a path: {address!r}", repr(address))
        try:
            path = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPath(f"path is not valid UTF-8: {shown}", shown) from None
        if "\0" in path:
            raise InvalidPath(f"path contains a NUL byte: {shown!r}", shown)
        if not path.startswith("/"):
            raise InvalidPath(f"not an absolute path: {shown}", shown)
        segments = [s for s in path.split("/") if s]
        if any(s in (".", "..") for s in segments):
            raise InvalidPath(f"'.' and '..' segments are not allowed: {shown}", shown)
        for s in segments:
            if len(s.encode("utf-8")) > NAME_MAX:
                raise InvalidPath(f"a name is {len(s.encode())} bytes long; at most {NAME_MAX} are allowed: "
                                  f"{s[:60]}...", shown)
        if len(raw) > PATH_MAX:
            raise InvalidPath(f"path is {len(raw)} bytes long; at most {PATH_MAX} are allowed: "
                              f"{shown[:80]}...", shown)
        return "/" + "/".join(segments)

    @staticmethod
    def url(path: str | bytes) -> str:
        """``file://`` URL of a local path (str, or bytes for names that are not UTF-8)."""
        if isinstance(path, str):
            path = os.fsencode(path)
        return "file://" + quote(path, safe="/:@!$&'()*+,;=-._~")

    # --- helpers -------------------------------------------------------------------------------

    def _error(self, exc: OSError, path: str) -> CatalogError:
        url = self.url(path)
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return NotFound(f"no such file or directory: {url}", url)
        if exc.errno in (errno.EACCES, errno.EPERM):
            return PermissionDenied(f"permission denied: {url}", url)
        if exc.errno in (errno.ENAMETOOLONG,):
            return InvalidPath(f"name too long: {url}", url)
        if exc.errno == errno.ELOOP:
            return InvalidPath(f"too many levels of symbolic links: {url}", url)
        return CatalogError(f"{os.strerror(exc.errno or 0)}: {url}", url)

    def _stat(self, path: str) -> os.stat_result:
        try:
            return os.stat(path)
        except OSError as exc:
            raise self._error(exc, path) from None

    def _entry(self, path: str | bytes, name: str, info: os.stat_result) -> Entry:
        modified = datetime.fromtimestamp(info.st_mtime, timezone.utc)
        if st.S_ISDIR(info.st_mode):
            kind = "image" if self.recognise_images and isinstance(path, str) and _is_image_dir(path) \
                else "collection"
            return Entry(self.url(path), name, kind, None, modified, None)
        return Entry(self.url(path), name, "object", info.st_size, modified, None)

    # --- the Catalog interface -----------------------------------------------------------------

    def stat(self, path) -> Entry:
        local = self.local_path(path)
        return self._entry(local, os.path.basename(local) or "/", self._stat(local))

    def list(self, path) -> Iterator[Entry]:
        local = self.local_path(path)
        info = self._stat(local)
        if not st.S_ISDIR(info.st_mode):
            return iter([self._entry(local, os.path.basename(local), info)])
        try:
            with os.scandir(os.fsencode(local)) as it:
                children = sorted(it, key=lambda d: d.name)
        except OSError as exc:
            raise self._error(exc, local) from None
        return self._list(local, children)

    def _list(self, local: str, children) -> Iterator[Entry]:
        dirs, files = [], []
        for child in children:
            raw = os.path.join(os.fsencode(local), child.name)
            try:
                name = child.name.decode("utf-8")
                path: str | bytes = raw.decode("utf-8")
            except UnicodeDecodeError:
                name, path = child.name.decode("utf-8", "backslashreplace"), raw
            try:
                info = os.stat(raw)
            except OSError:  # a dangling link or a race: listed as what lstat says
                try:
                    info = os.lstat(raw)
                except OSError:
                    continue
            (dirs if st.S_ISDIR(info.st_mode) else files).append((path, name, info))
        for path, name, info in dirs + files:
            yield self._entry(path, name, info)

    def metadata(self, path) -> dict[str, list[tuple[str, str]]]:
        local = self.local_path(path)
        self._stat(local)
        try:
            names = os.listxattr(local)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise self._error(exc, local) from None
        values: dict[str, str] = {}
        for attr in sorted(names):
            if not attr.startswith("user."):
                continue
            try:
                value = os.getxattr(local, attr)
            except OSError as exc:
                if exc.errno == errno.ENODATA:  # removed meanwhile
                    continue
                raise self._error(exc, local) from None
            values[attr[len("user."):]] = value.decode("utf-8", "backslashreplace")
        return {key: [(value, values.get(key + UNITS_SUFFIX, ""))] for key, value in values.items()
                if not (key.endswith(UNITS_SUFFIX) and key[:-len(UNITS_SUFFIX)] in values)}

    def search(self, query: Mapping[str, str], under: str | None = None) -> Iterator[Entry]:
        if not query:
            raise ValueError("search needs at least one key = value condition")
        if under is None and self.root is None:
            raise InvalidPath("a POSIX search needs under=... (or a catalog root): a whole file system "
                              "is not searched", None)
        top = self.local_path(under if under is not None else self.root)
        if not st.S_ISDIR(self._stat(top).st_mode):
            raise InvalidPath(f"{self.url(top)} is not a directory; search looks below a directory",
                              self.url(top))
        wanted = [(f"user.{k}", v.encode("utf-8"), like(v)) for k, v in query.items()]
        return self._search(top, wanted)

    def _matches(self, path: bytes, wanted) -> bool:
        for attr, value, pattern in wanted:
            try:
                have = os.getxattr(path, attr, follow_symlinks=False)
            except OSError:
                return False
            if pattern is None:
                if have != value:
                    return False
            elif not pattern.fullmatch(have.decode("utf-8", "replace")):
                return False
        return True

    def _search(self, top: str, wanted) -> Iterator[Entry]:
        visited = 0
        stack = [os.fsencode(top)]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as it:
                    children = sorted(it, key=lambda d: d.name)
            except OSError:
                continue  # unreadable directories are not searched
            subdirs = []
            for child in children:
                visited += 1
                if visited > self.search_limit:
                    raise SearchLimitExceeded(
                        f"the search below {self.url(top)} visited {self.search_limit} entries without "
                        f"finishing; narrow it with under=...", self.url(top))
                try:
                    is_dir = child.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if self._matches(child.path, wanted):
                    try:
                        name = child.name.decode("utf-8")
                        path = child.path.decode("utf-8")
                        info = os.stat(child.path)
                    except (UnicodeDecodeError, OSError):
                        pass
                    else:
                        yield self._entry(path, name, info)
                if is_dir and not _is_zarr_dir(child.path):
                    subdirs.append(child.path)
            stack.extend(reversed(subdirs))

    def open(self, path) -> BinaryIO:
        local = self.local_path(path)
        info = self._stat(local)
        if st.S_ISDIR(info.st_mode):
            raise InvalidPath(f"{self.url(local)} is a directory; only files can be opened", self.url(local))
        if not st.S_ISREG(info.st_mode):
            raise InvalidPath(f"{self.url(local)} is not a regular file", self.url(local))
        try:
            return open(local, "rb")
        except OSError as exc:
            raise self._error(exc, local) from None

    def checksum(self, path) -> str:
        with self.open(path) as f:
            try:
                return sha2_of_file(f)
            except OSError as exc:
                raise self._error(exc, self.local_path(path)) from None

    # Whole-key and byte-range reads in one call (used by the zarr store).
    def read_range(self, path, start: int | None = None, end: int | None = None) -> bytes:
        with self.open(path) as f:
            if start:
                f.seek(start if start >= 0 else max(0, os.fstat(f.fileno()).st_size + start))
            return f.read() if end is None else f.read(max(0, end - f.tell()))


def _is_zarr_dir(path: bytes | str) -> bool:
    return any(os.path.exists(os.path.join(path, os.fsencode(m) if isinstance(path, bytes) else m))
               for m in ZARR_MARKERS)


def _is_image_dir(path: str) -> bool:
    from .zarr import multiscales_in
    for marker in (".zattrs", "zarr.json"):
        try:
            with open(os.path.join(path, marker), "rb") as f:
                data = f.read(1 << 20)
        except OSError:
            continue
        if multiscales_in(data):
            return True
    return False
