"""Data catalogs behind one interface (see ``base``): iRODS now; POSIX, HTTP(S) and OMERO to come."""

from .base import (AuthenticationFailed, Catalog, CatalogError, CatalogUnavailable, Entry,
                   InvalidPath, NotFound, PermissionDenied)

__all__ = ["AuthenticationFailed", "Catalog", "CatalogError", "CatalogUnavailable", "Entry",
           "InvalidPath", "NotFound", "PermissionDenied", "IrodsCatalog"]


def __getattr__(name):
    # python-irodsclient is imported only when the iRODS catalog is used.
    if name == "IrodsCatalog":
        from .irods import IrodsCatalog
        return IrodsCatalog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
