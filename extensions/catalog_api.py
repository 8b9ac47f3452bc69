"""REST endpoints of the session for the notebook UI: catalog listings, metadata, staging jobs.

* ``GET {base_url}bioimage-gateway/catalog?url=URL&offset=0&limit=200``: one page of the
  collection at ``URL``: ``{"url", "offset", "limit", "entries": [{url, name, kind, size,
  modified, checksum}], "more": bool}``.  The catalog's listing is read lazily: a page costs
  ``offset + limit + 1`` entries, never the whole collection.
* ``GET {base_url}bioimage-gateway/catalog/metadata?url=URL``: ``{"url", "entry",
  "metadata": {key: [[value, units]]}, "rembi": {...}}``.
* ``GET {base_url}bioimage-gateway/catalog/search?url=URL&where=KEY=VALUE[&where=...]``: the
  entries below ``URL`` whose metadata match every condition (``%`` is a wildcard), paged like
  the listing.
* ``GET {base_url}bioimage-gateway/staging``: ``{"jobs": [staging.status() of every entry]}``.
* ``POST {base_url}bioimage-gateway/staging`` with ``{"url", "levels", "channels", "timepoints",
  "bbox"}`` (all but ``url`` optional): starts a background stage into the user's cache and
  answers 202 with its status (``path``, ``key``, ``state``); the selection is checked here, its
  fit with the image by the transfer (a mismatch ends as ``state: failed`` with the reason).

Every handler is ``@web.authenticated``: under JupyterHub only the session's owner (the
single user the server's OAuth admits) gets in.  Catalog errors map to HTTP statuses
(not found 404, permission denied 403, invalid address 400, unsupported 501, unavailable 503).

Which catalog serves a URL is chosen by its scheme: ``file://`` a ``PosixCatalog`` (what
the session's user may read), ``irods://`` the user's ``irods_environment.json``,
``omero://`` ``BIOIMAGE_GATEWAY_OMERO_URL`` with ``OMERO_USER``/``OMERO_PASSWORD``; each is
opened once and kept.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from bioimage_gateway.catalogs import (AuthenticationFailed, CatalogError, CatalogUnavailable, InvalidPath,
                                       NotFound, PermissionDenied, Unsupported)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 200


class Catalogs:
    """The session's catalogs, by scheme, opened on first use (or given, for tests)."""

    def __init__(self, given: dict | None = None):
        self._open = dict(given or {})
        self._lock = threading.Lock()

    def for_url(self, url: str):
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        with self._lock:
            if scheme not in self._open:
                self._open[scheme] = self._make(scheme, url)
            return self._open[scheme]

    @staticmethod
    def _make(scheme: str, url: str):
        if scheme == "file":
            from bioimage_gateway.catalogs.posix import PosixCatalog
            return PosixCatalog()
        if scheme == "irods":
            from bioimage_gateway.catalogs.irods import IrodsCatalog
            return IrodsCatalog()
        if scheme == "omero":
            from bioimage_gateway.catalogs.omero import OmeroCatalog
            web_url = os.environ.get("BIOIMAGE_GATEWAY_OMERO_URL")
            if not web_url:
                raise Unsupported("no OMERO server is configured for this session "
                                  "(BIOIMAGE_GATEWAY_OMERO_URL)", url)
            return OmeroCatalog(web_url, os.environ.get("OMERO_USER"), os.environ.get("OMERO_PASSWORD"))
        raise InvalidPath(f"no catalog for this address (file://, irods:// or omero://): {url}", url)


def entry_json(entry) -> dict:
    return {"url": entry.url, "name": entry.name, "kind": entry.kind, "size": entry.size,
            "modified": entry.modified.isoformat() if entry.modified else None, "checksum": entry.checksum}


STATUS = [(NotFound, 404), (PermissionDenied, 403), (AuthenticationFailed, 403), (InvalidPath, 400),
          (Unsupported, 501), (CatalogUnavailable, 503), (CatalogError, 500)]


class CatalogHandlerBase(APIHandler):
    def _int(self, name: str, default: int, low: int, high: int) -> int:
        text = self.get_argument(name, str(default))
        try:
            value = int(text)
        except ValueError:
            raise web.HTTPError(400, f"{name} must be an integer") from None
        if not low <= value <= high:
            raise web.HTTPError(400, f"{name} must be between {low} and {high}")
        return value

    async def _call(self, function, *args):
        try:
            return await asyncio.to_thread(function, *args)
        except CatalogError as exc:
            for cls, code in STATUS:
                if isinstance(exc, cls):
                    raise web.HTTPError(code, str(exc)) from None
            raise


class ListingHandler(CatalogHandlerBase):
    @web.authenticated
    async def get(self):
        url = self.get_argument("url")
        offset = self._int("offset", 0, 0, 10**9)
        limit = self._int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        catalogs: Catalogs = self.settings["bioimage_gateway_catalogs"]

        def page():
            catalog = catalogs.for_url(url)
            listing = catalog.list(url)
            if catalog.scheme == "irods":  # iRODS does not mark OME-Zarr images itself
                from bioimage_gateway.catalogs.zarr import classify
                listing = (classify(catalog, e) for e in listing)
            got = list(itertools.islice(listing, offset, offset + limit + 1))
            return got[:limit], len(got) > limit

        entries, more = await self._call(page)
        self.finish({"url": url, "offset": offset, "limit": limit,
                     "entries": [entry_json(e) for e in entries], "more": more})


class MetadataHandler(CatalogHandlerBase):
    @web.authenticated
    async def get(self):
        url = self.get_argument("url")
        catalogs: Catalogs = self.settings["bioimage_gateway_catalogs"]

        def read():
            from bioimage_gateway.catalogs.rembi import to_rembi
            catalog = catalogs.for_url(url)
            entry = catalog.stat(url)
            metadata = catalog.metadata(url)
            return entry, metadata, to_rembi(metadata)

        entry, metadata, rembi = await self._call(read)
        self.finish({"url": url, "entry": entry_json(entry),
                     "metadata": {k: [list(p) for p in v] for k, v in metadata.items()},
                     "rembi": rembi})


class SearchHandler(CatalogHandlerBase):
    @web.authenticated
    async def get(self):
        url = self.get_argument("url")
        query = dict(condition(text) for text in self.get_arguments("where"))
        if not query:
            raise web.HTTPError(400, "search needs at least one where=KEY=VALUE condition")
        offset = self._int("offset", 0, 0, 10**9)
        limit = self._int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        catalogs: Catalogs = self.settings["bioimage_gateway_catalogs"]

        def page():
            found = catalogs.for_url(url).search(query, under=url)
            got = list(itertools.islice(found, offset, offset + limit + 1))
            return got[:limit], len(got) > limit

        entries, more = await self._call(page)
        self.finish({"url": url, "where": query, "offset": offset, "limit": limit,
                     "entries": [entry_json(e) for e in entries], "more": more})


def condition(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise web.HTTPError(400, f"a condition is KEY=VALUE, not {text!r}")
    return key.strip(), value


class StagingHandler(APIHandler):
    @web.authenticated
    async def get(self):
        from bioimage_gateway.staging import status
        cache_dir = self.settings.get("bioimage_gateway_staging_cache")
        jobs = await asyncio.to_thread(status, None, cache_dir=cache_dir)
        self.finish({"jobs": jobs})

    @web.authenticated
    async def post(self):
        from bioimage_gateway.staging import StagingError, stage, status
        request = staging_request(self.get_json_body())
        cache_dir = self.settings.get("bioimage_gateway_staging_cache")

        def start():
            path = stage(request.pop("url"), **request, background=True, cache_dir=cache_dir)
            return status(path, cache_dir=cache_dir)

        try:
            doc = await asyncio.to_thread(start)
        except (StagingError, CatalogError, ValueError) as exc:
            raise web.HTTPError(400, str(exc)) from None
        self.set_status(202)
        self.finish(doc)


STAGING_KEYS = {"url", "levels", "channels", "timepoints", "bbox"}


def staging_request(body) -> dict:
    """A stage request from JSON, every value checked for its type and range (the transfer
    runs in a process of its own, so nothing unchecked may reach it)."""
    def fail(message):
        raise web.HTTPError(400, message)

    def ints(name, values, low=0, high=10**9):
        if not isinstance(values, list) or not values or not all(
                isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values):
            fail(f"{name} must be a non-empty list of integers from {low} to {high}")
        return values

    if not isinstance(body, dict):
        fail("the body must be a JSON object")
    unknown = set(body) - STAGING_KEYS
    if unknown:
        fail(f"unknown fields: {', '.join(sorted(map(str, unknown)))} (known: {', '.join(sorted(STAGING_KEYS))})")
    url = body.get("url")
    if not isinstance(url, str) or "://" not in url or len(url) > 4096 or any(ord(c) < 32 for c in url):
        fail("url must be a catalog address such as irods://zone/home/user/image.ome.zarr")
    out: dict = {"url": url}
    if body.get("levels") is not None:
        out["levels"] = ints("levels", body["levels"], 0, 64)
    if body.get("channels") is not None:
        channels = body["channels"]
        if not isinstance(channels, list) or not channels or not all(
                (isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 10**6)
                or (isinstance(c, str) and 0 < len(c) <= 256) for c in channels):
            fail("channels must be a non-empty list of channel indices or names")
        out["channels"] = channels
    timepoints = body.get("timepoints")
    if isinstance(timepoints, dict):
        start, stop = timepoints.get("start", 0), timepoints.get("stop")
        if set(timepoints) - {"start", "stop"} or not isinstance(start, int) or start < 0 or not (
                stop is None or (isinstance(stop, int) and stop > start)):
            fail("timepoints must be {\"start\": N, \"stop\": M} with 0 <= N < M, or a list of indices")
        out["timepoints"] = (start, stop)
    elif timepoints is not None:
        out["timepoints"] = ints("timepoints", timepoints)
    bbox = body.get("bbox")
    if bbox is not None:
        if not isinstance(bbox, dict) or not bbox or not all(
                k in ("t", "c", "z", "y", "x") and isinstance(v, list) and len(v) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v) and v[0] < v[1]
                for k, v in bbox.items()):
            fail("bbox must map axes (t, c, z, y, x) to [start, stop] with 0 <= start < stop")
        out["bbox"] = bbox
    return out


def _jupyter_server_extension_points():
    return [{"module": "bioimage_gateway.extensions.catalog_api"}]


def handlers(base_url: str) -> list:
    prefix = url_path_join(base_url, "bioimage-gateway")
    return [(url_path_join(prefix, "catalog"), ListingHandler),
            (url_path_join(prefix, "catalog/metadata"), MetadataHandler),
            (url_path_join(prefix, "catalog/search"), SearchHandler),
            (url_path_join(prefix, "staging"), StagingHandler)]


def _load_jupyter_server_extension(serverapp) -> None:
    settings = serverapp.web_app.settings
    settings.setdefault("bioimage_gateway_catalogs", Catalogs())
    serverapp.web_app.add_handlers(".*$", handlers(settings["base_url"]))
