"""REST endpoints of the session for the notebook UI: catalog listings, metadata, staging jobs.

* ``GET {base_url}bioimage-gateway/catalog?url=URL&offset=0&limit=200``: one page of the
  collection at ``URL``: ``{"url", "offset", "limit", "entries": [{url, name, kind, size,
  modified, checksum}], "more": bool}``.  The catalog's listing is read lazily: a page costs
  ``offset + limit + 1`` entries, never the whole collection.
* ``GET {base_url}bioimage-gateway/catalog/metadata?url=URL``: ``{"url", "entry",
  "metadata": {key: [[value, units]]}, "rembi": {...}}``.
* ``GET {base_url}bioimage-gateway/staging``: ``{"jobs": [staging.status() of every entry]}``.

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


class StagingHandler(APIHandler):
    @web.authenticated
    async def get(self):
        from bioimage_gateway.staging import status
        cache_dir = self.settings.get("bioimage_gateway_staging_cache")
        jobs = await asyncio.to_thread(status, None, cache_dir=cache_dir)
        self.finish({"jobs": jobs})


def _jupyter_server_extension_points():
    return [{"module": "bioimage_gateway.extensions.catalog_api"}]


def handlers(base_url: str) -> list:
    prefix = url_path_join(base_url, "bioimage-gateway")
    return [(url_path_join(prefix, "catalog"), ListingHandler),
            (url_path_join(prefix, "catalog/metadata"), MetadataHandler),
            (url_path_join(prefix, "staging"), StagingHandler)]


def _load_jupyter_server_extension(serverapp) -> None:
    settings = serverapp.web_app.settings
    settings.setdefault("bioimage_gateway_catalogs", Catalogs())
    serverapp.web_app.add_handlers(".*$", handlers(settings["base_url"]))
