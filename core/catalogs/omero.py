"""An OMERO catalog over the OMERO.web JSON API, with ``requests`` (omero-py is not needed).

Addresses: ``omero://HOST[:PORT]/`` (the root: the user's projects, screens, and datasets and
images in no container), ``omero://HOST/project/1``, ``.../dataset/2``, ``.../image/3``,
``.../screen/4``, ``.../plate/5``, and ``omero://HOST/group/6`` (the root restricted to one
group). HOST[:PORT] is the OMERO.web host the catalog was made for (``url`` or ``host=``).
Ids must be positive decimal integers; anything else (``..``, ``-1``, ``abc``, a query string) is
refused with ``InvalidPath`` before any request.

* Login: ``username``/``password`` through ``/api/v0/token/`` (CSRF) and ``/api/v0/login/``; or
  an existing OMERO session key (``session_key=``, joined with OMERO.web's ``?bsession=``); or an
  existing OMERO.web session cookie (``web_session=``, the ``sessionid`` cookie). A session that
  expires is logged in again once when the password is known. Refused credentials raise
  ``AuthenticationFailed``.
* Kinds: projects, datasets, screens, plates and groups are ``collection`` entries; images are
  ``object`` entries (``size`` is None: an OMERO image is pixels, not a file).
* ``list`` is lazy and paged: one request per page of ``page_size`` objects (OMERO.web gives at
  most 500), following ``meta.totalCount``. A request whose connection breaks is retried once;
  a second failure raises ``CatalogUnavailable`` naming the address.
* ``metadata`` is the map annotations (key-value pairs) on the object, from the webclient's
  ``/webclient/api/annotations/?type=map&<type>=<id>``, as ``{key: [(value, ""), ...]}``
  (OMERO key-values have no units).
* ``search``: OMERO.web's JSON API has no key-value search, so the catalog searches on the
  client side: it pages through the objects in scope (images, datasets, projects, screens and
  plates under the root; datasets and images under a project; images under a dataset; plates
  and their images under a screen) and fetches the map annotations of each page in one request
  (``image=1&image=2...``), keeping the objects with every ``key = value`` (``%`` in a value
  matches any run of characters). That is two requests per page of up to ``page_size`` objects.
* ``open`` is for byte ranges, which an OMERO image does not have: it raises ``Unsupported``
  and says to read pixels through ``zarr_url()`` (the OME-Zarr endpoint, ``zarr`` and
  ``ome-zarr`` can read it with ``storage_options()``), ``open_zarr()`` or ``thumbnail()``.
* ``checksum``: OMERO keeps no checksum of an image's pixels (only of imported original files,
  which the JSON API does not expose); it raises ``Unsupported``.
* Permissions: OMERO does not reveal objects a user may not read. OMERO.web answers 404 for an
  image that does not exist and for one in another user's private space alike, so the catalog
  raises ``NotVisible``, which is both ``NotFound`` and ``PermissionDenied``. A group the user is
  not a member of is refused by the server (403) and raises plain ``PermissionDenied``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping
from urllib.parse import unquote, urlsplit

import requests

from .base import (AuthenticationFailed, Catalog, CatalogError, CatalogUnavailable, Entry, InvalidPath,
                   NotFound, PermissionDenied, Unsupported)

KINDS = {"project": "Project", "dataset": "Dataset", "image": "Image", "screen": "Screen", "plate": "Plate"}
PLURAL = {"Project": "projects", "Dataset": "datasets", "Image": "images", "Screen": "screens",
          "Plate": "plates"}
MAX_ADDRESS = 2048
MAX_ID = 2 ** 63 - 1


class NotVisible(NotFound, PermissionDenied):
    """OMERO says the object is not there; it does not say whether it exists but is not readable."""


class OmeroCatalog(Catalog):
    scheme = "omero"

    def __init__(self, url: str, username: str | None = None, password: str | None = None, *,
                 session_key: str | None = None, web_session: str | None = None, server: int = 1,
                 host: str | None = None, page_size: int = 200, timeout: float = 30,
                 verify: bool | str = True):
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise ValueError(f"OMERO.web URL must be http(s)://host[:port][/prefix], not {url!r}")
        self.base = url.rstrip("/")
        self.host = host or split.netloc
        self.username, self._password, self.server = username, password, server
        self.page_size = max(1, min(int(page_size), 500))
        self.timeout = timeout
        self.http = requests.Session()
        self.http.verify = verify
        self.http.headers["User-Agent"] = "bioimage-gateway OmeroCatalog"
        self.event_context: dict = {}
        self.api = f"{self.base}/api/v0/"
        if password is not None:
            if not username:
                raise AuthenticationFailed("a username is needed with a password")
            self.login()
        elif session_key:
            self._join(session_key)
        elif web_session:
            self.http.cookies.set("sessionid", web_session)
            self._check_session("the OMERO.web session")
        else:
            raise AuthenticationFailed("OMERO needs a username and password, a session key or a web session")

    @classmethod
    def from_url(cls, address: str, *, url: str | None = None, web_scheme: str = "https",
                 **credentials) -> "OmeroCatalog":
        """The catalog for an ``omero://HOST[:PORT]/...`` address: OMERO.web at ``url`` if given,
        else at ``web_scheme://HOST[:PORT]``; ``credentials`` as for the constructor."""
        split = urlsplit(address) if isinstance(address, str) else None
        if not split or split.scheme != "omero" or not split.netloc:
            raise InvalidPath(f"not an omero://HOST/ address: {address!r}", str(address))
        return cls(url or f"{web_scheme}://{split.netloc}", host=split.netloc, **credentials)

    # --- sessions ------------------------------------------------------------------------------

    def _send(self, method: str, url: str, address: str, **kwargs) -> requests.Response:
        """One request; an idempotent GET whose connection breaks is retried once."""
        attempts = 2 if method == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                return self.http.request(method, url, timeout=self.timeout, allow_redirects=False, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == attempts:
                    raise CatalogUnavailable(
                        f"the connection to OMERO.web failed while working on {address}: {exc}", address) from exc

    def login(self) -> None:
        root = f"omero://{self.host}/"
        versions = self._send("GET", f"{self.base}/api/", root)
        if versions.status_code != 200:
            raise CatalogError(f"{self.base} does not look like OMERO.web (GET /api/ gave "
                               f"{versions.status_code})", root)
        bases = {v.get("version"): v.get("url:base") for v in versions.json().get("data", [])}
        if "0" not in bases:
            raise CatalogError(f"{self.base} offers no JSON API version 0 (has {sorted(bases)})", root)
        links = self._send("GET", self.api, root).json()
        token = self._send("GET", links.get("url:token", self.api + "token/"), root).json()["data"]
        reply = self._send("POST", links.get("url:login", self.api + "login/"), root,
                           data={"username": self.username, "password": self._password,
                                 "server": self.server},
                           headers={"X-CSRFToken": token, "Referer": self.base + "/"})
        body = _json(reply)
        if reply.status_code == 200 and body.get("success"):
            self.event_context = body.get("eventContext", {})
            return
        if reply.status_code == 403:
            message = body.get("message") or reply.text[:200]
            raise AuthenticationFailed(f"OMERO.web refused the credentials of {self.username}: {message}", root)
        raise CatalogError(f"OMERO.web login failed with HTTP {reply.status_code}: {reply.text[:200]}", root)

    def _join(self, session_key: str) -> None:
        self._check_session("the OMERO session key", {"bsession": session_key, "server": self.server})

    def _check_session(self, what: str, params: dict | None = None) -> None:
        root = f"omero://{self.host}/"
        reply = self._send("GET", self.api + "m/projects/", root, params={"limit": 1, **(params or {})})
        if reply.status_code == 403:
            raise AuthenticationFailed(f"OMERO.web did not accept {what} ({_message(reply)})", root)
        if reply.status_code != 200:
            raise CatalogError(f"OMERO.web answered HTTP {reply.status_code} to {what}", root)

    @property
    def session_key(self) -> str | None:
        """The OMERO session key (UUID) after a password login."""
        return self.event_context.get("sessionUuid")

    @property
    def web_session(self) -> str | None:
        """The OMERO.web session cookie (``sessionid``) this catalog uses."""
        return self.http.cookies.get("sessionid")

    def close(self) -> None:
        self.http.close()

    # --- addresses -----------------------------------------------------------------------------

    def parse(self, address) -> tuple[str | None, int | None]:
        """``(OMERO type, id)`` of an address, ``(None, None)`` for the root, ``("group", id)`` for a
        group; InvalidPath (before any request) for anything else."""
        shown = address if isinstance(address, str) else repr(address)
        if not isinstance(address, str):
            raise InvalidPath(f"not an omero:// address: {shown}", shown)
        if len(address) > MAX_ADDRESS:
            raise InvalidPath(f"address is {len(address)} characters long; at most {MAX_ADDRESS}: "
                              f"{shown[:80]}...", shown)
        if not address.startswith("omero://"):
            raise InvalidPath(f"not an omero:// address: {shown}", shown)
        split = urlsplit(address)
        if split.query or split.fragment:
            raise InvalidPath(f"omero:// addresses take no query or fragment: {shown}", shown)
        if split.netloc != self.host:
            raise InvalidPath(f"{shown} is not on this OMERO server ({self.host})", shown)
        segments = [unquote(s) for s in split.path.split("/") if s]
        if any(s in (".", "..") for s in segments):
            raise InvalidPath(f"'.' and '..' segments are not allowed: {shown}", shown)
        if not segments:
            return None, None
        if len(segments) != 2 or (segments[0] not in KINDS and segments[0] != "group"):
            raise InvalidPath(f"expected omero://{self.host}/<{'|'.join([*KINDS, 'group'])}>/<id>: {shown}", shown)
        kind, ident = segments
        if not re.fullmatch(r"[0-9]{1,19}", ident) or not 0 < int(ident) <= MAX_ID:
            raise InvalidPath(f"an OMERO id is a positive integer, not {ident!r}: {shown}", shown)
        return (KINDS.get(kind, "group"), int(ident))

    def url(self, type_: str | None = None, oid: int | None = None) -> str:
        if type_ is None:
            return f"omero://{self.host}/"
        return f"omero://{self.host}/{type_.lower()}/{oid}"

    # --- requests ------------------------------------------------------------------------------

    def _get(self, path: str, address: str, params=None, kind: str = "json"):
        """GET an OMERO.web path (relative to the base URL), turning failures into catalog errors.
        A session that expired is logged in again once when the password is known."""
        for attempt in (1, 2):
            reply = self._send("GET", f"{self.base}/{path.lstrip('/')}", address, params=params)
            expired = (reply.status_code == 403 and _message(reply) == "Not logged in") or (
                reply.status_code == 302 and "/login" in reply.headers.get("Location", ""))
            if expired and attempt == 1 and self._password is not None:
                self.login()
                continue
            break
        if expired:
            raise AuthenticationFailed(f"the OMERO.web session is not valid (any more) for {address}", address)
        if reply.status_code == 404:
            raise NotVisible(f"{address}: not found, or not readable by {self._who()} "
                             f"(OMERO does not tell these apart)", address)
        if reply.status_code == 403:
            raise PermissionDenied(f"permission denied: {address} ({_message(reply)})", address)
        if reply.status_code != 200:
            raise CatalogError(f"OMERO.web answered HTTP {reply.status_code} for {address}: "
                               f"{_message(reply)}", address)
        if kind == "json":
            try:
                return reply.json()
            except ValueError as exc:
                raise CatalogError(f"OMERO.web sent no JSON for {address}", address) from exc
        return reply.content

    def _who(self) -> str:
        return self.event_context.get("userName") or self.username or "this session"

    def _pages(self, path: str, address: str, params=None) -> Iterator[dict]:
        """The objects of a JSON API list, page by page (one request a page), lazily."""
        offset = 0
        while True:
            body = self._get(path, address, {**(params or {}), "offset": offset, "limit": self.page_size})
            data = body.get("data", [])
            yield from data
            offset += len(data)
            total = body.get("meta", {}).get("totalCount")
            if not data or (total is not None and offset >= total):
                return

    def _entry(self, obj: dict) -> Entry:
        type_ = obj["@type"].rsplit("#", 1)[-1]
        kind = "object" if type_ == "Image" else "collection"
        return Entry(self.url(type_, obj["@id"]), obj.get("Name") or f"{type_} {obj['@id']}", kind)

    # --- the Catalog interface -----------------------------------------------------------------

    def stat(self, path) -> Entry:
        type_, oid = self.parse(path)
        if type_ is None:
            return Entry(self.url(), self.host, "collection")
        if type_ == "group":
            self._get("api/v0/m/projects/", path, {"group": oid, "limit": 1})
            return Entry(self.url("group", oid), f"group {oid}", "collection")
        body = self._get(f"api/v0/m/{PLURAL[type_]}/{oid}/", path)
        return self._entry(body["data"])

    def list(self, path) -> Iterator[Entry]:
        type_, oid = self.parse(path)
        entry = self.stat(path)  # NotFound / PermissionDenied now, not at the first next()
        if type_ == "Image":
            return iter([entry])
        return self._list(type_, oid, path)

    def _list(self, type_, oid, address) -> Iterator[Entry]:
        if type_ in (None, "group"):
            scope = {"group": oid} if type_ == "group" else {}
            for plural, extra in (("projects", {}), ("screens", {}), ("datasets", {"orphaned": "true"}),
                                  ("images", {"orphaned": "true"}), ("plates", {"orphaned": "true"})):
                for obj in self._pages(f"api/v0/m/{plural}/", address, {**scope, **extra}):
                    yield self._entry(obj)
        elif type_ == "Plate":
            for well in self._pages(f"api/v0/m/plates/{oid}/wells/", address):
                for sample in well.get("WellSamples", []):
                    if "Image" in sample:
                        yield self._entry(sample["Image"])
        else:
            child = {"Project": "datasets", "Dataset": "images", "Screen": "plates"}[type_]
            for obj in self._pages(f"api/v0/m/{PLURAL[type_]}/{oid}/{child}/", address):
                yield self._entry(obj)

    def metadata(self, path) -> dict[str, list[tuple[str, str]]]:
        type_, oid = self.parse(path)
        self.stat(path)  # the annotations view answers "none" for what one may not read
        if type_ in (None, "group"):
            return {}
        found = self._annotations(type_, [oid], path)
        return found.get(oid, {})

    def _annotations(self, type_: str, ids: list[int], address: str) -> dict[int, dict]:
        """Map annotations of several objects of one type, ``{id: {key: [(value, "")]}}``, in one
        request per page of annotations."""
        out: dict[int, dict] = {}
        if not ids:
            return out
        limit, page = 500, 1
        while True:
            body = self._get("webclient/api/annotations/", address,
                             {"type": "map", type_.lower(): ids, "page": page, "limit": limit})
            anns = body.get("annotations", [])
            for ann in anns:
                if ann.get("class") not in (None, "MapAnnotationI"):
                    continue
                parent = ann.get("link", {}).get("parent", {})
                if parent.get("class", type_ + "I") != type_ + "I":
                    continue
                target = out.setdefault(parent.get("id"), {})
                for key, value in ann.get("values", []):
                    target.setdefault(key, []).append((value, ""))
            if len(anns) < limit:
                return out
            page += 1

    def search(self, query: Mapping[str, str], under: str | None = None) -> Iterator[Entry]:
        if not query:
            raise ValueError("search needs at least one key = value condition")
        scope = (None, None) if under is None else self.parse(under)
        address = under or self.url()
        if under is not None:
            self.stat(under)
        return self._search(dict(query), scope, address)

    def _search(self, query, scope, address) -> Iterator[Entry]:
        type_, oid = scope
        lists: list[tuple[str, str, dict]] = []  # (OMERO type, API path, params)
        if type_ in (None, "group"):
            extra = {"group": oid} if type_ == "group" else {}
            lists = [(t, f"api/v0/m/{PLURAL[t]}/", extra) for t in ("Project", "Dataset", "Screen", "Plate", "Image")]
        elif type_ == "Project":
            lists = [("Dataset", f"api/v0/m/projects/{oid}/datasets/", {})]
            for ds in self._pages(f"api/v0/m/projects/{oid}/datasets/", address):
                lists.append(("Image", f"api/v0/m/datasets/{ds['@id']}/images/", {}))
        elif type_ == "Dataset":
            lists = [("Image", f"api/v0/m/datasets/{oid}/images/", {})]
        elif type_ == "Screen":
            lists = [("Plate", f"api/v0/m/screens/{oid}/plates/", {})]
        elif type_ == "Image":
            lists = [("Image", None, {"@id": oid})]
        seen = set()
        for otype, path, params in lists:
            if path is None:
                objects = iter([self._get(f"api/v0/m/images/{oid}/", address)["data"]])
            else:
                objects = self._pages(path, address, params)
            for page in _chunks(objects, self.page_size):
                anns = self._annotations(otype, [o["@id"] for o in page], address)
                for obj in page:
                    if (otype, obj["@id"]) in seen:
                        continue
                    if _matches(anns.get(obj["@id"], {}), query):
                        seen.add((otype, obj["@id"]))
                        yield self._entry(obj)

    def open(self, path):
        type_, oid = self.parse(path)
        entry = self.stat(path)
        if type_ != "Image":
            raise InvalidPath(f"{entry.url} is a collection; only images are objects", entry.url)
        raise Unsupported(
            f"{entry.url} is an OMERO image: it is pixels, not a file, so it has no bytes to open; "
            f"read its pixels as OME-Zarr through zarr_url()/open_zarr(), or its thumbnail()", entry.url)

    def checksum(self, path) -> str:
        type_, oid = self.parse(path)
        entry = self.stat(path)
        if type_ != "Image":
            raise InvalidPath(f"{entry.url} is a collection; only images are objects", entry.url)
        raise Unsupported(f"OMERO records no checksum of an image's pixels ({entry.url}); the checksums "
                          f"of imported original files are not in OMERO.web's JSON API", entry.url)

    # --- pixels --------------------------------------------------------------------------------

    def _image(self, image) -> int:
        if isinstance(image, int):
            image = self.url("Image", image)
        type_, oid = self.parse(image)
        if type_ != "Image":
            raise InvalidPath(f"not an image address: {image}", image)
        return oid

    def thumbnail(self, image, size: int | None = None) -> bytes:
        """The rendered thumbnail (``/webgateway/render_thumbnail/<id>/[<size>/]``) as image bytes."""
        oid = self._image(image)
        address = self.url("Image", oid)
        path = f"webgateway/render_thumbnail/{oid}/" + (f"{int(size)}/" if size else "")
        return self._get(path, address, kind="bytes")

    def zarr_url(self, image) -> str:
        """The HTTP URL of the image's OME-Zarr (``/zarr/v0.4/image/<id>.zarr``, the layout of
        the OMERO.web zarr plugin); needs ``storage_options()`` (the session cookie) to be read.
        Raises ``Unsupported`` when this OMERO.web serves no OME-Zarr."""
        oid = self._image(image)
        address = self.url("Image", oid)
        self.stat(address)
        url = f"{self.base}/zarr/v0.4/image/{oid}.zarr"
        try:
            self._get(f"zarr/v0.4/image/{oid}.zarr/.zattrs", address, kind="bytes")
        except NotFound:
            raise Unsupported(f"{self.base} serves no OME-Zarr for {address} (no /zarr/v0.4/ endpoint)",
                              address) from None
        return url

    def storage_options(self) -> dict:
        """fsspec HTTP options (the session cookie) for ``zarr``/``ome-zarr`` to read ``zarr_url()``."""
        return {"headers": {"Cookie": f"sessionid={self.web_session}"}}

    def zarr_key(self, image, key: str) -> bytes:
        """One key of the image's OME-Zarr (``.zattrs``, ``0/.zarray``, ``0/0/0/0/0/0``...), as bytes."""
        oid = self._image(image)
        address = self.url("Image", oid)
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise InvalidPath(f"not a zarr key: {key!r}", address)
        return self._get(f"zarr/v0.4/image/{oid}.zarr/{'/'.join(parts)}", address, kind="bytes")

    def open_zarr(self, image):
        """The image's OME-Zarr as a read-only ``zarr`` group (needs the ``zarr`` package)."""
        import zarr  # optional: only this method needs it
        return zarr.open_group(self.zarr_url(image), mode="r", storage_options=self.storage_options())


def _json(reply: requests.Response) -> dict:
    try:
        body = reply.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _message(reply: requests.Response) -> str:
    return _json(reply).get("message") or reply.reason or str(reply.status_code)


def _chunks(items, n: int):
    page = []
    for item in items:
        page.append(item)
        if len(page) == n:
            yield page
            page = []
    if page:
        yield page


def _matches(kvs: dict[str, list[tuple[str, str]]], query: Mapping[str, str]) -> bool:
    for key, wanted in query.items():
        values = [v for v, _ in kvs.get(key, [])]
        if "%" in wanted:
            pattern = fnmatch.translate(wanted.replace("*", "[*]").replace("?", "[?]").replace("%", "*"))
            if not any(re.match(pattern, v) for v in values):
                return False
        elif wanted not in values:
            return False
    return True
