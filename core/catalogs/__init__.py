"""Data catalogs behind one interface (see ``base``): iRODS, OMERO, POSIX, HTTP(S).

``open_catalog(url, **credentials)`` picks the catalog for an address's scheme::

    open_catalog("irods://tempZone/home/alice")            # IrodsCatalog (irods_environment.json)
    open_catalog("file:///data/study1")                      # PosixCatalog
    open_catalog("https://example.org/images/")              # HttpCatalog (read-only)
    open_catalog("omero://omero.example.org/image/123", username=..., password=...)

OME-Zarr images at any of them are read through ``catalogs.zarr`` (a zarr store over a catalog).
"""

from urllib.parse import urlsplit

from .base import (AuthenticationFailed, Catalog, CatalogError, CatalogUnavailable, Entry,
                   InvalidPath, NotFound, PermissionDenied, Unsupported)
from .names import UnsafeName

__all__ = ["AuthenticationFailed", "Catalog", "CatalogError", "CatalogUnavailable", "Entry",
           "InvalidPath", "NotFound", "PermissionDenied", "IrodsCatalog", "Unsupported", "UnsafeName",
           "PosixCatalog", "HttpCatalog", "open_catalog"]


def __getattr__(name):
    # python-irodsclient (and requests) are imported only when their catalog is used.
    if name == "IrodsCatalog":
        from .irods import IrodsCatalog
        return IrodsCatalog
    if name == "PosixCatalog":
        from .posix import PosixCatalog
        return PosixCatalog
    if name == "HttpCatalog":
        from .http import HttpCatalog
        return HttpCatalog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_catalog(url: str, /, **credentials) -> Catalog:
    """The catalog that serves ``url``, chosen by its scheme; ``credentials`` go to its constructor.

    * ``irods://ZONE/...``: ``IrodsCatalog(**credentials)``; with no ``host`` given, the user's
      ``irods_environment.json`` is read; the zone defaults to the address's.
    * ``omero://HOST/...``: ``OmeroCatalog.from_url(url, **credentials)`` when the OMERO catalog
      has that constructor, else ``OmeroCatalog(**credentials)`` with ``url`` (the OMERO.web
      address) defaulting to ``https://HOST``.
    * ``file:///...``: ``PosixCatalog(**credentials)``.
    * ``http://...``, ``https://...``: ``HttpCatalog(**credentials)`` (e.g. ``auth=``, ``headers=``).
    """
    if not isinstance(url, str):
        raise InvalidPath(f"not a catalog address: {url!r}", repr(url))
    scheme = urlsplit(url).scheme.lower()
    if scheme == "irods":
        from .irods import IrodsCatalog
        zone = urlsplit(url).netloc
        if zone and credentials.get("host") is not None:
            credentials.setdefault("zone", zone)
        return IrodsCatalog(**credentials)
    if scheme == "omero":
        try:
            from .omero import OmeroCatalog
        except ImportError as exc:
            raise Unsupported(f"the OMERO catalog is not available in this installation "
                              f"(bioimage_gateway.catalogs.omero: {exc}); cannot open {url}", url) from exc
        if hasattr(OmeroCatalog, "from_url"):
            return OmeroCatalog.from_url(url, **credentials)
        # OmeroCatalog(url=<OMERO.web base URL>, username, password, ...): the web server is
        # taken to be https://<host of the omero:// address> unless ``url=`` says otherwise.
        credentials.setdefault("url", f"https://{urlsplit(url).netloc}")
        return OmeroCatalog(**credentials)
    if scheme == "file":
        from .posix import PosixCatalog
        return PosixCatalog(**credentials)
    if scheme in ("http", "https"):
        from .http import HttpCatalog
        return HttpCatalog(**credentials)
    if not scheme:
        raise InvalidPath(f"not a URL (no scheme): {url!r}; use file:///... for local paths", url)
    raise Unsupported(f"no catalog for {scheme}:// addresses ({url}); known: irods, omero, file, "
                      f"http, https", url)
