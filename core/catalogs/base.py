"""One interface over data catalogs (iRODS, and later POSIX, HTTP(S), OMERO).

Every catalog addresses things by URL (``irods://ZONE/home/USER/x.ome.zarr``, ``file:///...``)
and answers with ``Entry`` records; failures are the ``CatalogError`` subclasses below, each
naming the address concerned.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Literal


class CatalogError(Exception):
    """A catalog operation failed; ``path`` is the address concerned (when there is one)."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class InvalidPath(CatalogError, ValueError):
    """The address is refused before any request (``..`` segments, not UTF-8, too long...)."""


class NotFound(CatalogError, LookupError):
    """Nothing exists at the address."""


class PermissionDenied(CatalogError, PermissionError):
    """The address exists but the user may not read it."""


class AuthenticationFailed(CatalogError):
    """The catalog refused the credentials."""


class CatalogUnavailable(CatalogError, ConnectionError):
    """The catalog could not be reached, or the connection broke and a retry did not help."""


class Unsupported(CatalogError, NotImplementedError):
    """The catalog cannot do this at all (e.g. search over plain HTTP, listing a server without a
    JSON directory index)."""


@dataclass(frozen=True)
class Entry:
    """One thing in a catalog. ``kind`` is ``"collection"`` (a folder), ``"object"`` (bytes) or
    ``"image"``: a collection recognised as one OME-Zarr image (see ``catalogs.zarr``), which is
    still listed and opened key by key like a collection, but shown to users as one image."""

    url: str
    name: str
    kind: Literal["collection", "object", "image"]
    size: int | None = None
    modified: datetime | None = None
    checksum: str | None = None


class Catalog(abc.ABC):
    """What every catalog offers. ``path`` arguments are URLs of the catalog's scheme (or, where
    the catalog allows it, plain absolute paths)."""

    scheme: str = ""

    @abc.abstractmethod
    def list(self, path: str) -> Iterator[Entry]:
        """The entries of a collection, produced lazily."""

    @abc.abstractmethod
    def stat(self, path: str) -> Entry:
        """The entry at ``path``."""

    @abc.abstractmethod
    def metadata(self, path: str) -> dict[str, list[tuple[str, str]]]:
        """Key -> list of (value, units) pairs attached to ``path``."""

    @abc.abstractmethod
    def search(self, query: Mapping[str, str], under: str | None = None) -> Iterator[Entry]:
        """Entries whose metadata has every ``key = value`` of ``query`` (optionally below ``under``)."""

    @abc.abstractmethod
    def open(self, path: str) -> BinaryIO:
        """A readable, seekable binary file object over the object at ``path``."""

    @abc.abstractmethod
    def checksum(self, path: str) -> str:
        """The object's checksum as the catalog records it (e.g. ``sha2:<base64>``)."""

    def close(self) -> None:
        """Release connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
