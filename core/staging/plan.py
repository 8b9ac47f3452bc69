"""What to fetch: the objects of a selection, and the metadata the staged copy gets.

``plan(catalog, url, selection)`` reads the source's metadata (a few small reads), lists the
objects (one paged GenQuery per selected level on iRODS, ``os.walk`` on POSIX, parallel JSON
directory listings on HTTP, pruned to the selected chunks) and answers a ``Plan``:

* ``items``: ``Item(key, url, size, checksum)``: the source object at ``url`` goes to ``key``
  in the staged copy (chunk keys renumbered when channels or timepoints are subset);
* ``docs``: ``key -> bytes``: the metadata documents of the staged copy (``.zgroup``,
  ``.zattrs``, ``.zarray``, ``zarr.json``), rewritten for what it holds: only the selected
  levels in ``multiscales``, the channel and time axes cut to the selection, ``omero`` channels
  to match, a time translation when the range does not start at 0.

Selections (``Selection``): ``levels`` (indexes into ``multiscales.datasets`` or their paths,
``"s2"``), ``channels`` (indexes or names from ``omero``), ``timepoints`` (``range``, ``slice``,
``"A:B"``, ``(A, B)``, one index or a list), ``bbox`` (``{"z": (0, 8), "y": (0, 64), ...}`` in
full-resolution pixels: only the chunks that meet the box are staged, the arrays keep their
shape and read as the fill value elsewhere). A channel or time subset must not cut through
chunks: with one channel (timepoint) per chunk any subset is fine, otherwise a contiguous range
starting on a chunk boundary.

Anything that is not an OME-Zarr image (an object, a collection) is staged whole.

Every name a catalog gives (its listings, an iRODS query's collection and object names, the
final address of an HTTP redirect, ``multiscales.datasets[].path``) is checked where it comes in
(``catalogs.names``): a plan's keys are relative paths of plain names, inside the staged copy.
A bad one refuses the whole plan (``UnsafeName``, naming it and where it came from); nothing is
skipped silently, as a copy missing what the source has would look complete.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit

from ..catalogs.base import Catalog, Entry, InvalidPath, NotFound
from ..catalogs.names import UnsafeName, check_key, check_name, name_problem, safe_key
from ..catalogs.zarr import child_url, read_bytes
from .errors import SelectionError


class Item(NamedTuple):  # a tuple: made ten thousand times per plan, cheaply
    key: str  # where it goes, relative to the staged copy's root
    url: str  # where it comes from
    size: int | None
    checksum: str | None  # as the source records it (sha2:<base64>), None when it records none


@dataclass
class Plan:
    url: str
    name: str  # the staged copy's directory (or file) name
    kind: str  # "image", "collection" or "object"
    items: list[Item]
    docs: dict[str, bytes] = field(default_factory=dict)
    selection: dict = field(default_factory=dict)  # resolved (indexes), for the manifest
    levels: list[dict] = field(default_factory=list)  # per staged level: path, shape, chunks

    @cached_property
    def total_bytes(self) -> int:
        return sum(i.size or 0 for i in self.items) + sum(len(d) for d in self.docs.values())


# --- selections ------------------------------------------------------------------------------

def normalise_selection(levels=None, channels=None, timepoints=None, bbox=None) -> dict:
    """The selection as plain JSON values (the cache key is made from this, without any request)."""
    out: dict = {}
    if levels is not None:
        levels = [levels] if isinstance(levels, (int, str)) else list(levels)
        out["levels"] = [v if isinstance(v, str) and not v.isdigit() else int(v) for v in levels]
    if channels is not None:
        channels = [channels] if isinstance(channels, (int, str)) else list(channels)
        out["channels"] = [v if isinstance(v, str) and not v.isdigit() else int(v) for v in channels]
    if timepoints is not None:
        try:
            out["timepoints"] = _timepoints(timepoints)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SelectionError):
                raise
            raise SelectionError(f"timepoints {timepoints!r}: not a range A:B (B excluded), one timepoint or a "
                                 f"list of them") from None
    if bbox is not None:
        if not isinstance(bbox, dict):
            raise SelectionError(f"bbox must map axis names to (start, stop): {bbox!r}")
        out["bbox"] = {str(k): [int(v[0]), int(v[1])] for k, v in sorted(bbox.items())}
    return out


def _timepoints(value) -> dict | list:
    if isinstance(value, str):
        a, sep, b = value.partition(":")
        if not sep:
            return [int(value)]
        return {"start": int(a) if a else 0, "stop": int(b) if b else None}
    if isinstance(value, range):
        if value.step != 1:
            return list(value)
        return {"start": value.start, "stop": value.stop}
    if isinstance(value, slice):
        if value.step not in (None, 1):
            raise SelectionError(f"timepoint slices take no step: {value!r}")
        return {"start": value.start or 0, "stop": value.stop}
    if isinstance(value, int):
        return [value]
    if isinstance(value, tuple) and len(value) == 2:
        return {"start": int(value[0]), "stop": None if value[1] is None else int(value[1])}
    return [int(v) for v in value]


# --- walking a catalog -----------------------------------------------------------------------

Walked = tuple[str, str, "int | None", "str | None"]  # (relative key, URL, size, checksum)


def walk(catalog: Catalog, url: str, subdirs: list[str] | None = None,
         descend: Callable[[str], bool] | None = None, threads: int = 16) -> Iterator[Walked]:
    """Every object below the collection ``url`` (only below ``subdirs`` when given), with its
    key relative to ``url``; ``descend(relative dir)`` prunes (where the catalog is walked
    folder by folder)."""
    kind = type(catalog).__name__
    if kind == "IrodsCatalog":
        yield from _walk_irods(catalog, url, subdirs)
    elif kind == "PosixCatalog":
        yield from _walk_posix(catalog, url, subdirs, descend)
    elif kind == "HttpCatalog":
        yield from _walk_http(catalog, url, subdirs, descend, threads)
    else:
        yield from _walk_listing(catalog, url, subdirs, descend, threads)


def _walk_irods(catalog, url: str, subdirs) -> Iterator[Walked]:
    from irods.column import Like
    from irods.models import Collection, DataObject

    from ..catalogs.irods import _translated

    root = catalog.logical_path(url)
    seen: set[str] = set()
    for sub in subdirs or [""]:
        base = f"{root}/{sub}".rstrip("/") if sub else root
        for condition in (Collection.name == base, Like(Collection.name, base + "/%")):
            query = (catalog.session.query(DataObject.name, DataObject.size, DataObject.checksum,
                                           Collection.name).filter(condition))
            with _translated(catalog.url(base)):
                for batch in query.get_batches():
                    for row in batch:
                        coll = row[Collection.name]
                        if coll != base and not coll.startswith(base + "/"):
                            continue  # LIKE's '_' matched something else
                        path = f"{coll}/{row[DataObject.name]}"
                        if path in seen:
                            continue  # another replica
                        seen.add(path)
                        # The server's names, not ours: "base/../.." passes the prefix test above.
                        rel = path[len(root) + 1:]
                        if name_problem(row[DataObject.name]) is not None or not safe_key(rel):
                            check_name(row[DataObject.name], catalog.url(coll), "data object name")
                            check_key(rel, catalog.url(coll), "collection path")
                        size = row[DataObject.size]
                        yield (rel, catalog.url(path),
                               int(size) if size not in (None, "") else None,
                               row[DataObject.checksum] or None)


def _walk_posix(catalog, url: str, subdirs, descend) -> Iterator[Walked]:
    """Regular files (symbolic links followed), each folder's files before its subfolders, by name;
    symbolic links to folders are not followed. ``scandir`` and one ``stat`` per file: the walk is
    a good part of a local stage's time."""
    root = catalog.local_path(url)
    stack = [(os.path.join(root, sub) if sub else root, sub) for sub in reversed(subdirs or [""])]
    is_regular = stat.S_ISREG
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=_entry_name)
        except OSError:  # gone, not a folder, unreadable: nothing to stage there
            continue
        prefix = rel + "/" if rel else ""
        subfolders = []
        for entry in entries:
            try:
                if entry.is_dir():
                    if not entry.is_symlink():
                        subfolders.append(entry)
                    continue
                info = entry.stat()
            except OSError:
                continue
            if is_regular(info.st_mode):
                yield prefix + entry.name, entry.path, info.st_size, None
        for entry in reversed(subfolders):
            child = prefix + entry.name
            if descend is None or descend(child):
                stack.append((entry.path, child))


def _entry_name(entry: os.DirEntry) -> str:
    return entry.name


_SAFE_NAME = re.compile(r"[A-Za-z0-9._~-]+\Z")  # needs no percent-encoding in a URL path
_URL_SAFE = "/!$&'()*+,;=:@-._~"  # as catalogs.zarr.child_url quotes


def _walk_http(catalog, url: str, subdirs, descend, threads: int) -> Iterator[Walked]:
    """A web server's JSON directory listings (nginx's ``autoindex_format json``), a frontier of
    folders at a time, fetched by pipelined GETs on a few keep-alive connections and read with
    only what staging needs (name, kind, size): ``catalog.list`` costs a requests call and a date
    parse per entry, which for an image of ten thousand chunks is most of the time its stage
    takes. A listing the pipeline cannot bring or read goes through ``catalog.list`` (with its
    errors: not found, no JSON listing); so does everything where pipelining does not apply."""
    from .http_pipeline import Pipeline, pipelinable, request_target

    base = url if url.endswith("/") else url + "/"
    netloc = pipelinable(catalog, [base]) if "?" not in base else None
    if netloc is None:
        yield from _walk_listing(catalog, url, subdirs, descend, threads)
        return

    def folder_url(rel: str) -> str:
        return base + quote(rel, safe=_URL_SAFE) + "/" if rel else base

    def ordinary(rel: str) -> list[tuple[str, str, int | None]]:
        try:
            entries = catalog.list(folder_url(rel))
        except NotFound:
            return []
        return [(e.name, "object" if e.kind == "object" else "directory", e.size) for e in entries]

    def read(rel: str, response) -> list[tuple[str, str, int | None]]:
        try:
            index = json.loads(response.body) if response is not None else None
        except ValueError:
            index = None
        if not isinstance(index, list):
            return ordinary(rel)
        out = []
        for entry in index:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                return ordinary(rel)
            if name_problem(name) is not None:
                check_name(name, f"the listing of {folder_url(rel)}")
            size = entry.get("size")
            out.append((name, "directory" if entry.get("type") == "directory" else "object",
                        size if isinstance(size, int) else None))
        out.sort()
        return out

    lanes = max(1, min(threads, 4))  # connections; each carries many requests in flight
    pipes = [Pipeline(catalog, netloc, accept="application/json") for _ in range(lanes)]

    def fetch(job: tuple[Pipeline, list[str]]) -> list:
        pipe, rels = job
        responses = []
        for start in range(0, len(rels), 256):
            part = rels[start:start + 256]
            responses += pipe.get_many([request_target(folder_url(rel)) for rel in part])
        return [read(rel, response) for rel, response in zip(rels, responses)]

    frontier = list(subdirs) if subdirs else [""]
    try:
        with ThreadPoolExecutor(max_workers=lanes) as pool:
            while frontier:
                jobs = [(pipes[i], frontier[i::lanes]) for i in range(lanes) if frontier[i::lanes]]
                listings: dict[str, list] = {}
                for (_, rels), results in zip(jobs, pool.map(fetch, jobs)):
                    listings.update(zip(rels, results))
                next_frontier = []
                for rel in frontier:
                    prefix = rel + "/" if rel else ""
                    here = folder_url(rel)
                    for name, kind, size in listings[rel]:
                        child = prefix + name
                        if kind == "object":
                            yield child, here + (name if _SAFE_NAME.match(name) else quote(name, safe=_URL_SAFE)), \
                                size, None
                        elif descend is None or descend(child):
                            next_frontier.append(child)
                frontier = next_frontier
    finally:
        for pipe in pipes:
            pipe.close()


def _walk_listing(catalog, url: str, subdirs, descend, threads: int) -> Iterator[Walked]:
    """Folder by folder through ``catalog.list``, many folders at once."""
    base = url if url.endswith("/") else url + "/"

    def listing(rel: str) -> list[Entry]:
        try:
            return list(catalog.list(child_url(base, rel, collection=True) if rel else base))
        except NotFound:
            return []

    yield from _walk_listing_loop(catalog, base, subdirs, descend, threads, listing)


def _walk_listing_loop(catalog, base, subdirs, descend, threads, listing) -> Iterator[Walked]:
    frontier = list(subdirs) if subdirs else [""]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while frontier:
            results = list(pool.map(listing, frontier))
            next_frontier = []
            for rel, entries in zip(frontier, results):
                for entry in entries:
                    if name_problem(entry.name) is not None:
                        check_name(entry.name, f"the listing of {child_url(base, rel, collection=True)}")
                    child = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.kind == "object":
                        yield child, child_url(base, child), entry.size, entry.checksum
                    elif descend is None or descend(child):
                        next_frontier.append(child)
            frontier = next_frontier


# --- images ----------------------------------------------------------------------------------

def _json(catalog: Catalog, url: str) -> dict | None:
    try:
        doc = json.loads(read_bytes(catalog, url))
    except UnsafeName:  # a refused redirect: not "no such document"
        raise
    except (NotFound, InvalidPath):
        return None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


@dataclass
class _Level:
    path: str
    meta: dict  # .zarray or zarr.json
    shape: list[int]
    grid: list[int]  # chunk (v2) or shard/outer chunk (v3) shape
    prefix: str  # what comes before the chunk indexes in a key ("", "c/", "c.")
    sep: str
    allowed: list[set[int] | None] = field(default_factory=list)  # per axis: old chunk indexes
    remap: list[dict[int, int] | None] = field(default_factory=list)  # per axis: old -> new


def _axis_indexes(name: str, wanted, size: int, labels: list[str] | None = None) -> list[int]:
    """Resolved indexes along one axis (channels may be names)."""
    if isinstance(wanted, dict):  # a range
        start, stop = wanted["start"], wanted["stop"]
        stop = size if stop is None else stop
        if start < 0 or stop > size or start >= stop:
            raise SelectionError(f"{name} range {start}:{stop} is outside the image's 0:{size}")
        return list(range(start, stop))
    out = []
    for w in wanted:
        if isinstance(w, str):
            if not labels or w not in labels:
                raise SelectionError(f"no {name} named {w!r}; the image has {labels or 'no names'}")
            index = labels.index(w)
        else:
            index = int(w)
            if not 0 <= index < size:
                raise SelectionError(f"{name} {index} is outside the image's 0..{size - 1}")
        if index not in out:
            out.append(index)
    if not out:
        raise SelectionError(f"an empty {name} selection")
    return out


def _chunk_mapping(name: str, indexes: list[int], chunk: int) -> tuple[set[int], dict[int, int]]:
    if chunk == 1:
        return set(indexes), {old: new for new, old in enumerate(indexes)}
    contiguous = indexes == list(range(indexes[0], indexes[0] + len(indexes)))
    if not contiguous or indexes[0] % chunk:
        raise SelectionError(
            f"the {name} selection {indexes} cuts through chunks of {chunk} {name}s; choose a contiguous "
            f"range that starts at a multiple of {chunk}, or stage all {name}s")
    first = indexes[0] // chunk
    last = (indexes[-1]) // chunk
    return set(range(first, last + 1)), {old: old - first for old in range(first, last + 1)}


def plan(catalog: Catalog, url: str, selection: dict | None = None, threads: int = 16) -> Plan:
    """The objects and metadata of ``selection`` (see ``normalise_selection``) of ``url``."""
    selection = selection or {}
    entry = catalog.stat(url)
    name = check_name(unquote(urlsplit(entry.url).path.rstrip("/").rsplit("/", 1)[-1]) or "data", entry.url)
    if entry.kind == "object":
        if selection:
            raise SelectionError(f"{url} is a single object; levels, channels, timepoints and bbox apply "
                                 f"only to OME-Zarr images")
        # read from where a walk says (a POSIX walk gives local paths, which the transfer opens)
        source = catalog.local_path(entry.url) if type(catalog).__name__ == "PosixCatalog" else entry.url
        return _checked(Plan(entry.url, name, "object", [Item(name, source, entry.size, entry.checksum)]))
    base = entry.url
    root_v2 = _json(catalog, child_url(base, ".zattrs"))
    root_v3 = None if root_v2 and root_v2.get("multiscales") else _json(catalog, child_url(base, "zarr.json"))
    if root_v2 and root_v2.get("multiscales"):
        return _plan_image(catalog, base, name, 2, root_v2, selection, threads)
    if root_v3 is not None:
        attrs = root_v3.get("attributes") or {}
        ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
        if ome.get("multiscales"):
            return _plan_image(catalog, base, name, 3, root_v3, selection, threads)
    if selection:
        raise SelectionError(f"{url} is not an OME-Zarr image (no multiscales metadata); a selection "
                             f"applies only to images, a collection is staged whole")
    items = [Item(f"{name}/{rel}", src, size, checksum)
             for rel, src, size, checksum in walk(catalog, base, threads=threads)]
    return _checked(Plan(base, name, "collection", items))


def _plan_image(catalog, base: str, name: str, fmt: int, root: dict, selection: dict,
                threads: int) -> Plan:
    if fmt == 2:
        attrs = root
    else:
        attrs = root.get("attributes") or {}
        attrs = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs
    ms = attrs["multiscales"][0]
    datasets = ms.get("datasets") or []
    axes = ms.get("axes") or [{"name": n} for n in "tczyx"]
    axis_names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
    # NGFF makes a level's path relative to the image; multi-segment paths ("a/b") are refused
    # with the rest: every writer we know names a level with one name ("0", "s0"), the keys below
    # are mapped to levels by their first segment, and one plain name cannot leave the copy.
    document = child_url(base, ".zattrs" if fmt == 2 else "zarr.json")
    paths = [check_name(str(d["path"]) if isinstance(d, dict) and "path" in d else None,
                        f"multiscales.datasets of {document}", "level path") for d in datasets]

    # Levels.
    wanted_levels = selection.get("levels")
    if wanted_levels is None:
        chosen = list(range(len(paths)))
    else:
        chosen = []
        for w in wanted_levels:
            if isinstance(w, str):
                if w not in paths:
                    raise SelectionError(f"no level {w!r} in {base}; it has {paths}")
                i = paths.index(w)
            else:
                if not 0 <= w < len(paths):
                    raise SelectionError(f"level {w} is outside the image's 0..{len(paths) - 1} ({paths})")
                i = w
            if i not in chosen:
                chosen.append(i)
        chosen.sort()

    # Level metadata (every level, to scale a bbox; only the chosen ones are staged).
    levels: dict[int, _Level] = {}
    for i in sorted(set(chosen) | {0}):
        path = paths[i]
        if fmt == 2:
            meta = _json(catalog, child_url(base, f"{path}/.zarray"))
            if meta is None:
                raise NotFound(f"the image {base} names a level {path!r} that has no .zarray", base)
            levels[i] = _Level(path, meta, list(meta["shape"]), list(meta["chunks"]), "",
                               meta.get("dimension_separator") or ".")
        else:
            meta = _json(catalog, child_url(base, f"{path}/zarr.json"))
            if meta is None:
                raise NotFound(f"the image {base} names a level {path!r} that has no zarr.json", base)
            enc = meta.get("chunk_key_encoding") or {"name": "default"}
            sep = (enc.get("configuration") or {}).get("separator") or ("/" if enc["name"] == "default" else ".")
            prefix = ("c" + sep) if enc["name"] == "default" else ""
            levels[i] = _Level(path, meta, list(meta["shape"]),
                               list(meta["chunk_grid"]["configuration"]["chunk_shape"]), prefix, sep)

    ndim = len(levels[0].shape)
    if len(axis_names) != ndim:
        axis_names = list("tczyx"[-ndim:])
    channels_meta = ((attrs.get("omero") or {}).get("channels")) or []
    labels = [str(c.get("label")) for c in channels_meta] if channels_meta else None

    # Per-axis selections (indexes at full resolution).
    per_axis: dict[str, list[int]] = {}
    for axis, key in (("c", "channels"), ("t", "timepoints")):
        if selection.get(key) is None:
            continue
        if axis not in axis_names:
            raise SelectionError(f"the image {base} has no {axis!r} axis (axes {''.join(axis_names)}); "
                                 f"{key} cannot be selected")
        size = levels[0].shape[axis_names.index(axis)]
        per_axis[axis] = _axis_indexes("channel" if axis == "c" else "timepoint", selection[key], size,
                                       labels if axis == "c" else None)
    bbox = selection.get("bbox") or {}
    for axis in bbox:
        if axis not in axis_names:
            raise SelectionError(f"bbox axis {axis!r} is not one of the image's axes {''.join(axis_names)}")

    staged_levels = []
    for i in chosen:
        lv = levels[i]
        lv.allowed, lv.remap = [], []
        for d, axis in enumerate(axis_names):
            if axis in per_axis:
                if lv.shape[d] != levels[0].shape[d]:
                    raise SelectionError(f"level {lv.path} has {lv.shape[d]} along {axis!r}, level "
                                         f"{levels[0].path} {levels[0].shape[d]}: cannot subset {axis!r}")
                allowed, remap = _chunk_mapping("channel" if axis == "c" else "timepoint",
                                                per_axis[axis], lv.grid[d])
                lv.allowed.append(allowed)
                lv.remap.append(remap)
            elif axis in bbox:
                start, stop = bbox[axis]
                factor = levels[0].shape[d] / lv.shape[d]
                lo = max(0, int(start / factor) // lv.grid[d])
                hi = max(lo, math.ceil(min(stop, levels[0].shape[d]) / factor / lv.grid[d]) - 1)
                lv.allowed.append(set(range(lo, hi + 1)))
                lv.remap.append(None)
            else:
                lv.allowed.append(None)
                lv.remap.append(None)
        staged_levels.append(lv)

    # The objects.
    by_path = {lv.path: lv for lv in staged_levels}
    meta_names = {".zarray", ".zattrs", "zarr.json", ".zgroup"}

    def descend(rel: str) -> bool:
        parts = rel.split("/")
        lv = by_path.get(parts[0])
        if lv is None:
            return False
        idx = parts[1:]
        if lv.prefix == "c/":
            if not idx:
                return True
            if idx[0] != "c":
                return False
            idx = idx[1:]
        if lv.sep != "/":
            return not idx
        for d, part in enumerate(idx):
            if not part.isdigit() or d >= len(lv.allowed):
                return False
            if lv.allowed[d] is not None and int(part) not in lv.allowed[d]:
                return False
        return True

    def renamed(lv: _Level, indexes: list[str], first: int) -> str | None:
        """The staged names of chunk indexes ``first``, ``first + 1``...; None when a part is not
        a chunk index or not selected."""
        new = []
        for d, part in enumerate(indexes, first):
            if not part.isdigit():
                return None
            j = int(part)
            if lv.allowed[d] is not None and j not in lv.allowed[d]:
                return None
            new.append(str(lv.remap[d][j]) if lv.remap[d] is not None else part)
        return lv.sep.join(new)

    # A chunk's key is mapped in two parts: all but its last index (shared by a whole folder's
    # chunks, mapped once per folder) and its last index.
    items: list[Item] = []
    leading: dict[tuple[str, str], str | None] = {}
    for rel, src, size, checksum in walk(catalog, base, [lv.path for lv in staged_levels], descend, threads):
        level_path, _, rest = rel.partition("/")
        lv = by_path.get(level_path)
        if lv is None or not rest:
            continue
        if rest in meta_names:
            continue  # metadata: read during planning (web servers' listings hide dot files)
        if lv.prefix:
            if not rest.startswith(lv.prefix):
                continue
            rest = rest[len(lv.prefix):]
        head, sep, last = rest.rpartition(lv.sep)
        known = (level_path, head)
        if known in leading:
            new_head = leading[known]
        else:
            parts = head.split(lv.sep) if sep else []
            new_head = renamed(lv, parts, 0) if len(parts) == ndim - 1 else None
            leading[known] = new_head
        if new_head is None:
            continue
        if lv.allowed[-1] is None and lv.remap[-1] is None:  # the usual case: the last index as it is
            if not last.isdigit():
                continue
            new_last = last
        else:
            new_last = renamed(lv, [last], ndim - 1)
            if new_last is None:
                continue
        items.append(Item(f"{name}/{lv.path}/{lv.prefix}{new_head}{sep}{new_last}", src, size, checksum))

    # The rewritten metadata.
    docs: dict[str, bytes] = {}
    new_sizes = {axis: len(ix) for axis, ix in per_axis.items()}
    for lv in staged_levels:
        meta = json.loads(json.dumps(lv.meta))
        for axis, n in new_sizes.items():
            meta["shape"][axis_names.index(axis)] = n
        docs[f"{name}/{lv.path}/{'.zarray' if fmt == 2 else 'zarr.json'}"] = _dump(meta)
        if fmt == 2:  # an array's own attributes, copied as they are
            level_attrs = _json(catalog, child_url(base, f"{lv.path}/.zattrs"))
            if level_attrs is not None:
                docs[f"{name}/{lv.path}/.zattrs"] = _dump(level_attrs)
    new_attrs = json.loads(json.dumps(attrs))
    new_ms = new_attrs["multiscales"][0]
    new_ms["datasets"] = [new_ms["datasets"][i] for i in chosen]
    t_sel = per_axis.get("t")
    if t_sel and t_sel[0] > 0 and t_sel == list(range(t_sel[0], t_sel[0] + len(t_sel))):
        t = axis_names.index("t")
        for ds in new_ms["datasets"]:
            transforms = ds.setdefault("coordinateTransformations", [])
            scale = next((tr["scale"] for tr in transforms if tr.get("type") == "scale"), [1.0] * ndim)
            translation = next((tr for tr in transforms if tr.get("type") == "translation"), None)
            if translation is None:
                translation = {"type": "translation", "translation": [0.0] * ndim}
                transforms.append(translation)
            translation["translation"][t] = translation["translation"][t] + t_sel[0] * scale[t]
    if "c" in per_axis and channels_meta:
        new_attrs.setdefault("omero", {})["channels"] = [channels_meta[i] for i in per_axis["c"]]
    rdefs = (new_attrs.get("omero") or {}).get("rdefs")
    if isinstance(rdefs, dict) and "t" in new_sizes and "defaultT" in rdefs:
        rdefs["defaultT"] = min(int(rdefs["defaultT"]), new_sizes["t"] - 1)
    if fmt == 2:
        docs[f"{name}/.zattrs"] = _dump(new_attrs)
        zgroup = _json(catalog, child_url(base, ".zgroup")) or {"zarr_format": 2}
        docs[f"{name}/.zgroup"] = _dump(zgroup)
    else:
        new_root = json.loads(json.dumps(root))
        if isinstance((new_root.get("attributes") or {}).get("ome"), dict):
            new_root["attributes"]["ome"] = new_attrs
        else:
            new_root["attributes"] = new_attrs
        docs[f"{name}/zarr.json"] = _dump(new_root)

    resolved = {"levels": [paths[i] for i in chosen]}
    if "c" in per_axis:
        resolved["channels"] = per_axis["c"]
        if labels:
            resolved["channel_names"] = [labels[i] for i in per_axis["c"]]
    if "t" in per_axis:
        resolved["timepoints"] = per_axis["t"]
    if bbox:
        resolved["bbox"] = bbox
    level_info = [{"path": lv.path, "shape": [new_sizes.get(a, s) for a, s in zip(axis_names, lv.shape)],
                   "chunks": lv.grid} for lv in staged_levels]
    return _checked(Plan(base, name, "image", items, docs, resolved, level_info))


def _checked(the_plan: Plan) -> Plan:
    """The plan, once every key in it is a relative path of plain names (they were checked as
    they came in; this is the one pass over all of them that says so)."""
    for item in the_plan.items:
        check_key(item.key, item.url)
    for key in the_plan.docs:
        check_key(key, the_plan.url)
    return the_plan


def _dump(doc: dict) -> bytes:
    return json.dumps(doc, indent=4).encode()
