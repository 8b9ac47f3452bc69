"""A read-only catalog over HTTP(S) with requests: ``http://`` and ``https://`` addresses.

* ``stat`` is one HEAD request (redirects followed): size from ``Content-Length``, time from
  ``Last-Modified``. An address ending in ``/``, or one the server redirects to its ``/`` form
  (as web servers do for directories), is a collection. Its name (the last segment of the final
  address, decoded) must be one file name (``names.check_name``), as must every name in a listing.
* Redirects are followed here, not by requests: at most ``MAX_REDIRECTS`` hops, each target
  checked as an address given to the catalog is (``check_url``: no ``..`` however encoded...),
  never from ``https`` to ``http``, and credentials (``auth=``, an ``Authorization`` header) are
  not sent on to another host (as requests does). A refused redirect is ``RefusedRedirect``.
* ``open`` gives a seekable file object reading with HTTP Range requests (``bytes=a-b``), with a
  small read-ahead buffer (``read_ahead`` bytes, 64 KiB by default), so that many small reads
  cost few requests. A server that ignores ``Range`` (answers 200) is read whole once and served
  from memory. All requests share one ``requests.Session`` (one connection pool per host).
* ``list`` needs a JSON directory index, as nginx gives with::

      location /images/ {
          autoindex on;
          autoindex_format json;    # [{"name": "x", "type": "file", "mtime": "...", "size": 12}, ...]
      }

  (Apache's and other HTML indexes are not parsed: ``Unsupported``.) nginx's index leaves out
  names starting with ``.``, so Zarr v2's ``.zattrs``/``.zarray`` do not show in listings; zarr
  and ``catalogs.zarr`` read them by name, which is all they need.
* HTTP has no metadata: ``metadata`` is ``{}`` for anything that exists, and ``search`` is
  ``Unsupported``.
* ``checksum`` is the server's own, when it sends one: ``Repr-Digest: sha-256=:<base64>:``
  (RFC 9530) or ``Digest: SHA-256=<base64>`` (RFC 3230), given as ``sha2:<base64>`` like iRODS;
  otherwise ``None`` (the content is not downloaded to compute one; ``compute=True`` does).
* Status codes: 404/410 ``NotFound``, 401 ``AuthenticationFailed``, 403 ``PermissionDenied``,
  400/414 ``InvalidPath``, 5xx and network failures ``CatalogUnavailable`` (idempotent requests
  are retried once on a broken connection).
* Addresses are refused before any request (``InvalidPath``) when they have ``.``/``..``
  segments (also percent-encoded), are not UTF-8 once percent-decoded, contain NUL bytes or a
  fragment, or are longer than 8000 characters.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote, unquote_to_bytes, urldefrag, urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from .base import (AuthenticationFailed, Catalog, CatalogError, CatalogUnavailable, Entry, InvalidPath,
                   NotFound, PermissionDenied, Unsupported)
from .names import UnsafeName, check_name
from .posix import sha2_of_file

MAX_URL = 8000
MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)
DEFAULT_READ_AHEAD = 64 * 1024
IMAGE_SUFFIXES = (".zarr", ".zarr/")


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def digest_sha2(headers: Mapping[str, str]) -> str | None:
    """The SHA-256 a server states in ``Repr-Digest``/``Content-Digest`` (RFC 9530) or ``Digest``
    (RFC 3230), as ``sha2:<base64>``; None when it states none."""
    for header in ("Repr-Digest", "Content-Digest"):
        m = re.search(r"(?:^|,)\s*sha-256\s*=\s*:([A-Za-z0-9+/=]+):", headers.get(header, ""), re.I)
        if m:
            return "sha2:" + m.group(1)
    m = re.search(r"(?:^|,)\s*sha-256\s*=\s*([A-Za-z0-9+/=]+)", headers.get("Digest", ""), re.I)
    if m:
        return "sha2:" + m.group(1)
    return None


class RefusedRedirect(UnsafeName):
    """The server redirected to an address the catalog refuses (``..`` segments, however
    encoded; another scheme; ``https`` to ``http``; too many hops). ``path`` is the address
    asked for, ``name`` the redirect's ``Location``."""


def _keep_request(request):
    """requests' auth hook that adds nothing: a session's credentials stay with their host."""
    return request


class HttpObjectFile(io.RawIOBase):
    """A read-only, seekable file over one HTTP resource, read with Range requests and a
    read-ahead buffer. ``requests`` counts the HTTP requests made."""

    def __init__(self, catalog: "HttpCatalog", url: str, size: int | None, read_ahead: int):
        super().__init__()
        self._catalog = catalog
        self.url = self.name = url
        self.size = size
        self._read_ahead = read_ahead
        self._pos = 0
        self._buf = b""
        self._buf_start = 0
        self._whole: bytes | None = None
        self.requests = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def writable(self):
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            if self.size is None:
                raise io.UnsupportedOperation(f"the server did not give the size of {self.url}")
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = len(view)
        if n == 0 or (self.size is not None and self._pos >= self.size):
            return 0
        data = self._bytes(self._pos, n)
        view[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def _bytes(self, pos: int, n: int) -> bytes:
        if self._whole is not None:
            return self._whole[pos:pos + n]
        offset = pos - self._buf_start
        if 0 <= offset < len(self._buf):
            return self._buf[offset:offset + n]
        want = max(n, self._read_ahead)
        if self.size is not None:
            want = min(want, self.size - pos)
        status, data = self._catalog._get_range(self.url, pos, pos + want)
        self.requests += 1
        if status == 200:  # the server ignored Range: keep the whole content
            self._whole = data
            self.size = len(data)
            return data[pos:pos + n]
        self._buf, self._buf_start = data, pos
        return data[:n]

    def readall(self) -> bytes:
        chunks = []
        while True:
            chunk = self.read(max(self._read_ahead, 1 << 20))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def close(self):
        self._buf = b""
        self._whole = None
        super().close()


class HttpCatalog(Catalog):
    scheme = "https"

    def __init__(self, *, session: requests.Session | None = None, auth=None,
                 headers: Mapping[str, str] | None = None, timeout: float = 30, verify: bool | str = True,
                 read_ahead: int = DEFAULT_READ_AHEAD, pool_maxsize: int = 16,
                 recognise_images: bool = True):
        self.session = session or requests.Session()
        if session is None:
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_maxsize)
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
        if auth is not None:
            self.session.auth = auth
        if headers:
            self.session.headers.update(headers)
        self.session.verify = verify
        self.timeout = timeout
        self.read_ahead = read_ahead
        self.recognise_images = recognise_images
        self.requests_made = 0

    def close(self) -> None:
        self.session.close()

    # --- addresses -----------------------------------------------------------------------------

    def check_url(self, address) -> str:
        """The address (scheme lower-case, spaces and non-ASCII percent-encoded), after the checks
        in the module doc."""
        shown = address if isinstance(address, str) else repr(address)
        if isinstance(address, bytes):
            try:
                address = address.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidPath(f"address is not valid UTF-8: {shown}", shown) from None
        if not isinstance(address, str):
            raise InvalidPath(f"not an address: {address!r}", repr(address))
        if len(address) > MAX_URL:
            raise InvalidPath(f"address is {len(address)} characters long; at most {MAX_URL} are allowed: "
                              f"{address[:80]}...", address[:200])
        try:
            parts = urlsplit(address)
        except ValueError as exc:
            raise InvalidPath(f"not a valid URL: {shown} ({exc})", shown) from None
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise InvalidPath(f"not an http(s):// address: {shown}", shown)
        if parts.fragment or address.endswith("#"):
            raise InvalidPath(f"an address has no fragment (#...): {shown}", shown)
        raw = unquote_to_bytes(parts.path)
        try:
            path = raw.decode("utf-8")
            address.encode("utf-8")
        except (UnicodeDecodeError, UnicodeEncodeError):
            raise InvalidPath(f"path is not valid UTF-8: {shown!r}", shown) from None
        if "\0" in path or "\0" in unquote(parts.query):
            raise InvalidPath(f"address contains a NUL byte: {shown!r}", shown)
        if any(s in (".", "..") for s in path.split("/")):
            raise InvalidPath(f"'.' and '..' segments are not allowed: {shown}", shown)
        # Percent-encode what must be (spaces, non-ASCII), keeping what is encoded already.
        safe_path = quote(parts.path, safe="/:@!$&'()*+,;=-._~%")
        return urlunsplit((parts.scheme.lower(), parts.netloc, safe_path or "/", parts.query, ""))

    # --- requests ------------------------------------------------------------------------------

    def _request(self, method: str, url: str, *, headers=None, stream=False, ok=(200,)) -> requests.Response:
        """The response to ``method url``, redirects followed (``_exchange``)."""
        return self._exchange(method, url, headers=headers, stream=stream, ok=ok)[0]

    def _exchange(self, method: str, url: str, *, headers=None, stream=False,
                  ok=(200,)) -> tuple[requests.Response, str]:
        """The response and the (checked) address it came from, after following redirects here:
        requests would follow any ``Location`` it is given, and the final address names what is
        staged."""
        asked, strip_auth = url, False
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send(method, url, headers, stream, strip_auth)
            if response.status_code not in REDIRECTS:
                break
            location = response.headers.get("Location")
            response.close()
            target = self._redirect_target(asked, url, location)
            strip_auth = strip_auth or self.session.should_strip_auth(url, target)
            url = target
        else:
            raise RefusedRedirect(f"{asked} was redirected more than {MAX_REDIRECTS} times (last to "
                                  f"{url}); refused", asked, url)
        if response.status_code not in ok:
            status = response.status_code
            response.close()
            raise _status_error(status, response.reason, url, asked)
        return response, url

    def _send(self, method: str, url: str, headers, stream: bool, strip_auth: bool) -> requests.Response:
        if strip_auth:  # a redirect to another host: the session's credentials are not sent there
            headers = {**(headers or {}), "Authorization": None}
        for attempt in (1, 2):
            try:
                self.requests_made += 1
                # verify= given per request: requests lets $REQUESTS_CA_BUNDLE override the session's
                return self.session.request(method, url, headers=headers, timeout=self.timeout, stream=stream,
                                            allow_redirects=False, auth=_keep_request if strip_auth else None,
                                            verify=self.session.verify)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == 2:
                    raise CatalogUnavailable(f"could not reach {url}: {exc}", url) from exc
            except requests.RequestException as exc:
                raise CatalogError(f"HTTP request for {url} failed: {exc}", url) from exc

    def _redirect_target(self, asked: str, current: str, location: str | None) -> str:
        """A redirect's target, checked like an address given to the catalog."""
        if not location:
            raise CatalogError(f"the server redirected {current} without saying where (no Location)", asked)
        try:  # a fragment in a Location is the client's own business: never sent
            target = self.check_url(urldefrag(urljoin(current, location)).url)
        except InvalidPath as exc:
            raise RefusedRedirect(f"refused the redirect of {asked} to {location!r}: {exc}", asked,
                                  location) from None
        if current.startswith("https:") and not target.startswith("https:"):
            raise RefusedRedirect(f"refused the redirect of {asked} to {location!r}: from https to plain "
                                  f"http", asked, location)
        return target

    def _get_range(self, url: str, start: int | None, end: int | None) -> tuple[int, bytes]:
        """GET ``[start, end)`` (``start`` < 0: the last ``-start`` bytes; ``end`` None: to the
        end). Returns the status (206, or 200 when the server sent everything) and the bytes."""
        if start is None and end is None:
            headers = None
        elif start is not None and start < 0:
            headers = {"Range": f"bytes={start}"}
        elif end is None:
            headers = {"Range": f"bytes={start}-"}
        else:
            if end <= (start or 0):
                return 206, b""
            headers = {"Range": f"bytes={start or 0}-{end - 1}"}
        response = self._request("GET", url, headers=headers, ok=(200, 206, 416))
        if response.status_code == 416:  # the range starts past the end: nothing to read
            response.close()
            return 206, b""
        try:
            return response.status_code, response.content
        except requests.RequestException as exc:
            raise CatalogUnavailable(f"the connection broke while reading {url}: {exc}", url) from exc

    def read_range(self, path, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of an object in one request (``start`` < 0: the last bytes)."""
        url = self.check_url(path)
        status, data = self._get_range(url, start, end)
        if status == 200 and (start or end is not None):  # no Range support: cut here
            if start is not None and start < 0:
                return data[start:]
            return data[start or 0:end]
        return data

    # --- the Catalog interface -----------------------------------------------------------------

    def stat(self, path) -> Entry:
        url = self.check_url(path)
        response, final = self._exchange("HEAD", url)
        response.close()
        name = unquote(urlsplit(final).path.rstrip("/").rsplit("/", 1)[-1])
        if name or urlsplit(final).path.strip("/"):  # the server's root has no name
            check_name(name, final if final == url else f"{final} (redirected from {url})")
        modified = _when(response.headers.get("Last-Modified"))
        if final.endswith("/"):
            kind = "image" if self.recognise_images and _image_like(final) and self._is_image(final) \
                else "collection"
            return Entry(final, name, kind, None, modified, None)
        length = response.headers.get("Content-Length")
        return Entry(final, name, "object", int(length) if length and length.isdigit() else None,
                     modified, digest_sha2(response.headers))

    def _is_image(self, url: str) -> bool:
        from .zarr import is_ome_zarr
        try:
            return is_ome_zarr(self, url)
        except CatalogError:
            return False

    def list(self, path) -> Iterator[Entry]:
        url = self.check_url(path)
        if not url.endswith("/"):
            entry = self.stat(url)
            if entry.kind == "object":
                return iter([entry])
            url = entry.url
        response = self._request("GET", url, headers={"Accept": "application/json"})
        kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        try:
            index = json.loads(response.content.decode("utf-8")) if kind.endswith("json") else None
        except (UnicodeDecodeError, ValueError):
            index = None
        if not isinstance(index, list) or not all(isinstance(i, dict) and "name" in i for i in index):
            raise Unsupported(f"{url} gives no JSON directory index ({kind or 'no content type'}); an "
                              f"HTTP collection can be listed only from a server with one (nginx: "
                              f"'autoindex on; autoindex_format json;')", url)
        return self._entries(url, index)

    def _entries(self, base: str, index: list[dict]) -> Iterator[Entry]:
        dirs, files = [], []
        for item in sorted(index, key=lambda i: str(i["name"])):
            name = check_name(item["name"], f"the listing of {base}")
            child = urljoin(base, quote(name, safe="!$&'()*+,;=:@-._~"))
            modified = _when(item.get("mtime"))
            if item.get("type") == "directory":
                dirs.append((child + "/", name, modified))
            else:
                size = item.get("size")
                files.append(Entry(child, name, "object", size if isinstance(size, int) else None,
                                   modified, None))
        for child, name, modified in dirs:
            kind = "image" if self.recognise_images and _image_like(child) and self._is_image(child) \
                else "collection"
            yield Entry(child, name, kind, None, modified, None)
        yield from files

    def metadata(self, path) -> dict[str, list[tuple[str, str]]]:
        self.stat(path)  # NotFound / PermissionDenied as for anything else
        return {}

    def search(self, query: Mapping[str, str], under: str | None = None) -> Iterator[Entry]:
        raise Unsupported("HTTP has no metadata to search; search the catalog the data come from "
                          "(iRODS, OMERO)", under)

    def open(self, path) -> HttpObjectFile:
        entry = self.stat(path)
        if entry.kind != "object":
            raise InvalidPath(f"{entry.url} is a collection; only objects can be opened", entry.url)
        return HttpObjectFile(self, entry.url, entry.size, self.read_ahead)

    def checksum(self, path, *, compute: bool = False) -> str | None:
        """The server's SHA-256 (``sha2:<base64>``), or None when it gives none; with
        ``compute=True`` the content is downloaded and hashed instead."""
        entry = self.stat(path)
        if entry.kind != "object":
            raise InvalidPath(f"{entry.url} is a collection; only objects have checksums", entry.url)
        if entry.checksum or not compute:
            return entry.checksum
        with self.open(entry.url) as f:
            return sha2_of_file(io.BufferedReader(f, 1 << 20))


def _image_like(url: str) -> bool:
    return url.lower().endswith(IMAGE_SUFFIXES)


def _status_error(status: int, reason: str, url: str, asked: str | None = None) -> CatalogError:
    """The error for an HTTP status; ``url`` answered it, ``asked`` (the error's ``path``) is the
    address asked for when a redirect led from there."""
    detail = f"HTTP {status} {reason or ''}".strip()
    shown, path = url, url
    if asked is not None and asked != url:
        shown, path = f"{url} (redirected from {asked})", asked
    if status in (404, 410):
        return NotFound(f"no such object or collection: {shown} ({detail})", path)
    if status == 401:
        return AuthenticationFailed(f"the server wants credentials for {shown} ({detail})", path)
    if status == 403:
        return PermissionDenied(f"permission denied: {shown} ({detail})", path)
    if status in (400, 414):
        return InvalidPath(f"the server refused the address {shown} ({detail})", path)
    if status >= 500:
        return CatalogUnavailable(f"the server failed on {shown} ({detail})", path)
    return CatalogError(f"unexpected answer for {shown}: {detail}", path)
