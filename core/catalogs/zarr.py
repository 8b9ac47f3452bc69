"""OME-Zarr images in any catalog: recognise them, describe them, read them without staging.

* ``is_ome_zarr(catalog, url)``: the collection holds OME-Zarr image metadata, ``multiscales`` in
  ``.zattrs`` (OME-Zarr 0.4, Zarr v2) or in ``zarr.json``'s ``attributes.ome`` (OME-Zarr 0.5,
  Zarr v3). One or two small reads.
* ``classify(catalog, entry)`` / ``browse(catalog, url)``: listing entries with OME-Zarr
  collections marked ``kind="image"``, for catalogs whose own ``list`` does not mark them
  (``IrodsCatalog``; ``PosixCatalog`` marks them itself, ``HttpCatalog`` marks ``*.zarr/``).
* ``describe_image(catalog, url)``: levels (path, shape, chunk shape, dtype, scale), axes,
  channels (names, colours and windows from the ``omero`` metadata) and sizes, read from the
  JSON metadata only (no zarr-python needed).
* ``CatalogStore(catalog, url)``: a read-only zarr-python 3 store over any catalog. Keys map to
  URLs below ``url``; ``get`` reads whole keys or byte ranges through the catalog
  (``read_range`` where the catalog has it, else ``open``/``seek``/``read``), ``list``/
  ``list_dir`` go through ``catalog.list``. So::

      group = zarr.open_group(store=CatalogStore(catalog, url), mode="r")
      level0 = dask.array.from_zarr(group["s0"])

  ``open_image`` and ``read_pyramid`` do exactly that. (ome-zarr 0.18's reader, ``ome_zarr.io
  .ZarrLocation``, accepts only paths, ``LocalStore`` and ``FsspecStore``, and rebuilds stores
  from path strings for sub-nodes, so it cannot read through a custom store; use zarr and dask
  as above, with ``describe_image`` for the OME metadata.)

zarr-python is imported only when a store is made.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from urllib.parse import quote

from .base import Catalog, CatalogError, Entry, InvalidPath, NotFound

__all__ = ["is_ome_zarr", "classify", "browse", "describe_image", "ImageDescription", "Level",
           "Channel", "CatalogStore", "open_image", "read_pyramid", "multiscales_in", "read_bytes"]


# --- reading through a catalog -----------------------------------------------------------------

def child_url(url: str, key: str, collection: bool = False) -> str:
    """The URL of ``key`` (``a/b/c``) below the collection ``url``."""
    joined = url.rstrip("/") + "/" + quote(key.strip("/"), safe="/!$&'()*+,;=:@-._~")
    return joined + "/" if collection and key else (joined if key else url.rstrip("/") + "/")


def read_bytes(catalog: Catalog, url: str, start: int | None = None, end: int | None = None) -> bytes:
    """Bytes ``[start, end)`` of an object (``start`` < 0: the last ``-start`` bytes), in one
    request where the catalog can (``read_range``), else through ``open``."""
    reader = getattr(catalog, "read_range", None)
    if reader is not None:
        return reader(url, start, end)
    with catalog.open(url) as f:
        if start is not None and start < 0:
            size = getattr(f, "size", None)
            if size is None:
                size = f.seek(0, 2)
            f.seek(max(0, size + start))
        elif start:
            f.seek(start)
        if end is None:
            return f.read()
        return f.read(max(0, end - (start or 0)))


def _read_json(catalog: Catalog, url: str, documents: dict | None = None) -> dict | None:
    """A JSON document at ``url``, or None when there is none (missing, or not an object);
    its bytes are kept in ``documents`` (by URL; None when missing) when given."""
    try:
        data = read_bytes(catalog, url)
    except (NotFound, InvalidPath):
        data = None
    if documents is not None:
        documents[url] = data
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _ome_attrs(doc: dict, v3: bool) -> dict:
    attrs = doc.get("attributes", {}) if v3 else doc
    if isinstance(attrs, dict) and isinstance(attrs.get("ome"), dict):
        return attrs["ome"]
    return attrs if isinstance(attrs, dict) else {}


def multiscales_in(data: bytes) -> bool:
    """Whether a ``.zattrs`` or ``zarr.json`` document carries OME-Zarr ``multiscales``."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(doc, dict):
        return False
    v3 = "zarr_format" in doc and doc.get("zarr_format") == 3
    return bool(_ome_attrs(doc, v3).get("multiscales"))


def _image_attrs(catalog: Catalog, url: str, documents: dict | None = None) -> tuple[int, dict] | None:
    """(zarr format, OME attributes) of the image at ``url``, or None if it is none."""
    zattrs = _read_json(catalog, child_url(url, ".zattrs"), documents)
    if zattrs is not None and zattrs.get("multiscales"):
        return 2, zattrs
    zarr_json = _read_json(catalog, child_url(url, "zarr.json"), documents)
    if zarr_json is not None and zarr_json.get("node_type", "group") == "group":
        attrs = _ome_attrs(zarr_json, True)
        if attrs.get("multiscales"):
            return 3, attrs
    return None


def is_ome_zarr(catalog: Catalog, url: str) -> bool:
    """Whether the collection at ``url`` is an OME-Zarr image (0.4 or 0.5)."""
    return _image_attrs(catalog, url) is not None


def classify(catalog: Catalog, entry: Entry) -> Entry:
    """``entry`` with kind ``"image"`` if it is a collection holding an OME-Zarr image."""
    if entry.kind != "collection":
        return entry
    try:
        return replace(entry, kind="image") if is_ome_zarr(catalog, entry.url) else entry
    except CatalogError:  # unreadable metadata: shown as the collection it is
        return entry


def browse(catalog: Catalog, url: str) -> Iterator[Entry]:
    """``catalog.list(url)`` with OME-Zarr collections marked as images (one or two small reads
    per sub-collection not marked already)."""
    for entry in catalog.list(url):
        yield classify(catalog, entry)


# --- describing an image ---------------------------------------------------------------------

@dataclass(frozen=True)
class Level:
    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...] | None = None
    shards: tuple[int, ...] | None = None

    @property
    def nbytes(self) -> int:
        """Uncompressed size in bytes."""
        import numpy
        return math.prod(self.shape) * numpy.dtype(self.dtype).itemsize

    @property
    def chunk_count(self) -> int:
        return math.prod(math.ceil(s / c) for s, c in zip(self.shape, self.chunks))


@dataclass(frozen=True)
class Channel:
    name: str
    color: str | None = None
    window: dict | None = None
    active: bool | None = None


@dataclass(frozen=True)
class ImageDescription:
    url: str
    name: str | None
    version: str | None  # OME-Zarr version ("0.4", "0.5")
    zarr_format: int
    axes: list[dict]
    levels: list[Level]
    channels: list[Channel]
    sizes: dict[str, int] = field(default_factory=dict)  # axis name -> size at full resolution

    @property
    def axis_names(self) -> str:
        return "".join(a["name"] for a in self.axes)

    def as_dict(self) -> dict:
        return asdict(self)


def _axes(ms: dict, ndim: int) -> list[dict]:
    axes = ms.get("axes")
    if not axes:  # OME-Zarr 0.1/0.2: always 5D tczyx
        return [{"name": n} for n in "tczyx"[-ndim:]]
    return [dict(a) if isinstance(a, dict) else {"name": str(a)} for a in axes]


def _scale(dataset: dict) -> tuple[float, ...] | None:
    for t in dataset.get("coordinateTransformations") or []:
        if t.get("type") == "scale" and "scale" in t:
            return tuple(float(s) for s in t["scale"])
    return None


def _level(catalog: Catalog, url: str, dataset: dict, zarr_format: int, documents: dict | None = None) -> Level:
    path = str(dataset["path"])
    if zarr_format == 2:
        meta = _read_json(catalog, child_url(url, f"{path}/.zarray"), documents)
        if meta is None:
            raise NotFound(f"the image {url} names a level {path!r} that has no .zarray", url)
        return Level(path, tuple(meta["shape"]), tuple(meta["chunks"]), str(_dtype(meta["dtype"])),
                     _scale(dataset))
    meta = _read_json(catalog, child_url(url, f"{path}/zarr.json"), documents)
    if meta is None:
        raise NotFound(f"the image {url} names a level {path!r} that has no zarr.json", url)
    chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    shards = None
    for codec in meta.get("codecs") or []:
        if codec.get("name") == "sharding_indexed":
            shards, chunks = chunks, tuple(codec["configuration"]["chunk_shape"])
    return Level(path, tuple(meta["shape"]), chunks, str(meta["data_type"]), _scale(dataset), shards)


def _dtype(text) -> str:
    import numpy
    try:
        return str(numpy.dtype(text))
    except TypeError:
        return str(text)


def describe_image(catalog: Catalog, url: str, documents: dict | None = None) -> ImageDescription:
    """Levels, axes, channels and sizes of the OME-Zarr image at ``url`` (``InvalidPath`` when
    ``url`` is not one). The metadata documents read are kept in ``documents`` when given, for
    ``open_image`` to use instead of reading them again."""
    found = _image_attrs(catalog, url, documents)
    if found is None:
        catalog.stat(url)  # NotFound / PermissionDenied for the address itself
        raise InvalidPath(f"{url} is not an OME-Zarr image (no multiscales in .zattrs or zarr.json)", url)
    zarr_format, attrs = found
    ms = attrs["multiscales"][0]
    datasets = ms.get("datasets", [])
    if len(datasets) > 1:  # one metadata document per level: read them at once, not in turn
        with ThreadPoolExecutor(min(8, len(datasets))) as pool:
            levels = list(pool.map(lambda ds: _level(catalog, url, ds, zarr_format, documents), datasets))
    else:
        levels = [_level(catalog, url, ds, zarr_format, documents) for ds in datasets]
    ndim = len(levels[0].shape) if levels else 0
    axes = _axes(ms, ndim)
    sizes = {a["name"]: s for a, s in zip(axes, levels[0].shape)} if levels else {}
    channels = []
    omero = attrs.get("omero") or {}
    for i, ch in enumerate(omero.get("channels") or []):
        color = ch.get("color")
        channels.append(Channel(str(ch.get("label") or f"channel {i}"),
                                f"#{color}" if color and not str(color).startswith("#") else color,
                                ch.get("window"), ch.get("active")))
    if not channels and "c" in sizes:
        channels = [Channel(f"channel {i}") for i in range(sizes["c"])]
    version = ms.get("version") or attrs.get("version")
    return ImageDescription(url=url, name=ms.get("name"), version=version, zarr_format=zarr_format,
                            axes=axes, levels=levels, channels=channels, sizes=sizes)


# --- a zarr store over a catalog ----------------------------------------------------------------

READERS = 16  # chunk reads in flight per process, through any catalog
_readers: list = []


def _reader_pool() -> ThreadPoolExecutor:
    if not _readers:
        _readers.append(ThreadPoolExecutor(READERS, thread_name_prefix="catalog-store"))
    return _readers[0]


def _define_store():
    import asyncio

    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype

    class CatalogStore(Store):
        """A read-only zarr store whose keys are the objects below ``url`` in ``catalog``."""

        supports_writes = False
        supports_deletes = False
        supports_partial_writes = False
        supports_listing = True

        def __init__(self, catalog: Catalog, url: str, *, read_only: bool = True,
                     documents: dict | None = None):
            if not read_only:
                raise ValueError("a CatalogStore is read-only")
            super().__init__(read_only=True)
            self.catalog = catalog
            self.url = url.rstrip("/")
            self.documents = dict(documents or {})  # URL -> bytes (None: known missing), read before

        def with_read_only(self, read_only: bool = False):
            if not read_only:
                raise ValueError("a CatalogStore is read-only")
            return type(self)(self.catalog, self.url, documents=self.documents)

        def __eq__(self, other: object) -> bool:
            return (isinstance(other, CatalogStore) and other.catalog is self.catalog
                    and other.url == self.url)

        def __repr__(self) -> str:
            return f"CatalogStore({type(self.catalog).__name__}, {self.url!r})"

        __str__ = __repr__

        def key_url(self, key: str, collection: bool = False) -> str:
            if any(part in (".", "..") for part in key.split("/")):
                raise InvalidPath(f"zarr key with '.' or '..' segments: {key!r}", key)
            return child_url(self.url, key, collection)

        def _read(self, key: str, byte_range) -> bytes | None:
            if byte_range is None:
                start = end = None
            elif isinstance(byte_range, RangeByteRequest):
                start, end = byte_range.start, byte_range.end
            elif isinstance(byte_range, OffsetByteRequest):
                start, end = byte_range.offset, None
            elif isinstance(byte_range, SuffixByteRequest):
                start, end = -byte_range.suffix, None
            else:
                raise TypeError(f"unexpected byte range {byte_range!r}")
            url = self.key_url(key)
            if byte_range is None and url in self.documents:
                return self.documents[url]
            try:
                return read_bytes(self.catalog, url, start, end)
            except (NotFound, InvalidPath):
                return None

        async def get(self, key, prototype=None, byte_range=None):
            prototype = prototype or default_buffer_prototype()
            # Reads wait on the network, not the CPU: a pool of their own, wider than asyncio's
            # default (cores + 4), keeps a view's chunks in flight together.
            data = await asyncio.get_running_loop().run_in_executor(_reader_pool(), self._read, key, byte_range)
            return None if data is None else prototype.buffer.from_bytes(data)

        async def get_partial_values(self, prototype, key_ranges):
            return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

        def _exists(self, key: str) -> bool:
            try:
                return self.catalog.stat(self.key_url(key)).kind == "object"
            except (NotFound, InvalidPath):
                return False

        async def exists(self, key: str) -> bool:
            return await asyncio.to_thread(self._exists, key)

        async def getsize(self, key: str) -> int:
            def size():
                try:
                    entry = self.catalog.stat(self.key_url(key))
                except NotFound:
                    raise FileNotFoundError(key) from None
                if entry.kind != "object" or entry.size is None:
                    raise FileNotFoundError(key)
                return entry.size
            return await asyncio.to_thread(size)

        async def set(self, key, value):
            raise PermissionError(f"{self!r} is read-only")

        async def delete(self, key):
            raise PermissionError(f"{self!r} is read-only")

        def _entries(self, prefix: str) -> list[Entry]:
            try:
                return list(self.catalog.list(self.key_url(prefix, collection=True)))
            except NotFound:
                return []

        async def list_dir(self, prefix: str):
            for entry in await asyncio.to_thread(self._entries, prefix.strip("/")):
                yield entry.name

        async def list_prefix(self, prefix: str):
            # Keys below ``prefix`` (a folder, or the start of names in one).
            folder, _, start = prefix.rpartition("/")
            pending = [(folder, start)]
            while pending:
                folder, start = pending.pop()
                for entry in await asyncio.to_thread(self._entries, folder):
                    if not entry.name.startswith(start):
                        continue
                    key = f"{folder}/{entry.name}" if folder else entry.name
                    if entry.kind == "object":
                        yield key
                    else:
                        pending.append((key, ""))

        async def list(self):
            async for key in self.list_prefix(""):
                yield key

    return CatalogStore


def __getattr__(name):
    if name == "CatalogStore":
        cls = _define_store()
        globals()["CatalogStore"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_image(catalog: Catalog, url: str, zarr_format: int | None = None, documents: dict | None = None):
    """The image's root ``zarr.Group``, read through the catalog (no copy); ``zarr_format``
    and the metadata ``documents`` when known (``describe_image`` tells) spare reading them
    again."""
    import zarr
    store_class = globals().get("CatalogStore") or __getattr__("CatalogStore")
    return zarr.open_group(store=store_class(catalog, url, documents=documents), mode="r",
                           zarr_format=zarr_format)


def read_pyramid(catalog: Catalog, url: str) -> list:
    """One lazy dask array per resolution level (full resolution first), read through the catalog."""
    import dask.array as da
    description = describe_image(catalog, url)
    group = open_image(catalog, url, description.zarr_format)
    return [da.from_zarr(group[level.path]) for level in description.levels]
