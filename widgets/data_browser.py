"""A notebook data browser over the configured catalogs (iRODS, OMERO, scratch).

    from bioimage_gateway.widgets import DataBrowser
    DataBrowser()                       # in a notebook cell

One tree over every catalog: the top level lists the catalogs, a click on a
collection opens it, the breadcrumbs go back up.  Listings are read lazily, a
page at a time (``page_size`` entries, 200 by default; "More" reads the next
page), so a collection of 100 000 objects costs one page of requests.  A
``key=value`` search (several separated by commas) looks below the current
collection.  Selecting an entry shows its details: REMBI metadata (from the
catalog's metadata, through ``catalogs.rembi.to_rembi``), size, checksum, whether
it is staged, and for OME-Zarr images their levels and a thumbnail read from
the lowest resolution level.  Every action has a one-line Python equivalent,
shown in the "Python" box, ready to copy.

The logic lives in :class:`BrowserModel` (navigation, selection, paging,
search, details, thumbnails, snippets), which drives the catalogs;
:class:`DataBrowser` is the view: its buttons call the model and redraw.
Names come from catalogs and may contain anything (``<img src=x onerror=...>``):
every HTML widget here escapes them, and lists show them as plain text.
"""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import ipywidgets as w

from bioimage_gateway.catalogs import Catalog, CatalogError, Entry
from bioimage_gateway.napari_desktop import NAPARI_IMPORT, napari_snippet

PAGE_SIZE = 200
THUMBNAIL_MAX = 256  # pixels along the longer side
CHECKSUM_MAX_BYTES = 64 << 20  # computed (POSIX) checksums only for objects up to this size


# --- configuration ---------------------------------------------------------------------------

@dataclass
class Root:
    """One catalog in the browser: a label, the catalog, where browsing starts, and the name
    its snippets give it (``var = <setup>`` is shown once, so snippets can use ``var``)."""

    label: str
    catalog: Catalog | None  # None until the user signs in (see ``sign_in``)
    url: str
    var: str = "catalog"
    setup: str = ""
    credentials: dict = field(default_factory=dict)  # for background stages (``stage(**credentials)``)
    # A catalog that needs the user's own password (OMERO): ``sign_in(username, password)``
    # returns the opened catalog; the password stays in memory, in this kernel only.
    sign_in: Callable[[str, str], Catalog] | None = None

    def __post_init__(self):
        if not self.setup:
            self.setup = f"{self.var} = open_catalog({self.url!r})"


def _as_roots(catalogs) -> list[Root]:
    if isinstance(catalogs, Mapping):
        items = []
        for label, value in catalogs.items():
            if isinstance(value, Root):
                items.append(value)
            else:
                catalog, url = value
                items.append(Root(label, catalog, url, var=_var_name(label)))
        return items
    roots = []
    for value in catalogs:
        if isinstance(value, Root):
            roots.append(value)
        else:
            catalog, url = value
            roots.append(Root(catalog.scheme or "catalog", catalog, url, var=_var_name(catalog.scheme)))
    return roots


def _var_name(label: str) -> str:
    name = re.sub(r"\W+", "_", str(label).strip().lower()).strip("_") or "catalog"
    return name if name.isidentifier() and not name[0].isdigit() else f"c_{name}"


def default_roots() -> list[Root]:
    """The catalogs of a session: iRODS (from ``irods_environment.json``, its home collection),
    OMERO (``BIOIMAGE_GATEWAY_OMERO_URL`` with ``OMERO_USER``/``OMERO_PASSWORD``) and scratch.
    A catalog that cannot be opened is left out."""
    from bioimage_gateway.catalogs.posix import PosixCatalog
    from bioimage_gateway.staging.api import scratch_dir

    roots: list[Root] = []
    try:
        from bioimage_gateway.catalogs.irods import IrodsCatalog
        irods = IrodsCatalog()
        home = f"irods://{irods.zone}/home/{irods.user}"
        roots.append(Root("iRODS", irods, home, var="irods",
                          setup=f"irods = open_catalog({f'irods://{irods.zone}/'!r})"))
    except Exception:  # noqa: BLE001 - no iRODS environment in this session
        pass
    omero_url = os.environ.get("BIOIMAGE_GATEWAY_OMERO_URL")
    if omero_url:
        try:
            roots.append(omero_root(omero_url, os.environ.get("OMERO_USER"), os.environ.get("OMERO_PASSWORD")))
        except Exception:  # noqa: BLE001 - a broken OMERO must not hide the other catalogs
            pass
    scratch = scratch_dir()
    roots.append(Root("scratch", PosixCatalog(scratch), PosixCatalog.url(str(scratch)), var="scratch",
                      setup=f"scratch = PosixCatalog({str(scratch)!r})"))
    return roots


def omero_root(web_url: str, username: str | None = None, password: str | None = None) -> Root:
    """OMERO at ``web_url`` (OMERO.web): opened now when credentials are given, else listed
    with a sign-in box (OMERO has its own accounts and sessions)."""
    from bioimage_gateway.catalogs.omero import OmeroCatalog

    def setup(user: str) -> str:
        return ("from getpass import getpass; from bioimage_gateway.catalogs.omero import OmeroCatalog; "
                f"omero = OmeroCatalog({web_url!r}, {user!r}, getpass())")

    def sign_in(user: str, secret: str) -> Catalog:
        catalog = OmeroCatalog(web_url, user, secret)
        root.setup = setup(user)
        return catalog

    catalog = OmeroCatalog(web_url, username, password) if username and password else None
    address = catalog.url() if catalog else f"omero://{urlsplit(web_url).netloc}/"
    root = Root("OMERO", catalog, address, var="omero", setup=setup(username or os.environ.get("USER", "username")),
                sign_in=sign_in)
    return root


# --- PNG ---------------------------------------------------------------------------------------

def encode_png(rgb) -> bytes:
    """PNG bytes of an (height, width, 3) or (height, width) uint8 array: Pillow when it is
    installed, else a minimal zlib-based writer."""
    import numpy as np
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    try:
        from PIL import Image
    except ImportError:
        return png_bytes(rgb)
    import io
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def png_bytes(pixels) -> bytes:
    """A PNG of an (h, w) grey or (h, w, 3) RGB uint8 array, with ``zlib`` only."""
    import numpy as np
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        colour_type, height, width = 0, *pixels.shape
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        colour_type, height, width = 2, pixels.shape[0], pixels.shape[1]
    else:
        raise ValueError(f"cannot write a PNG of shape {pixels.shape}")
    rows = pixels.reshape(height, -1)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _hex_rgb(color: str | None, index: int):
    palette = ("00FF00", "FF00FF", "00FFFF", "FF0000", "0000FF", "FFFF00")
    text = (color or "").lstrip("#")
    if not re.fullmatch(r"[0-9a-fA-F]{6}", text):
        text = palette[index % len(palette)]
    return tuple(int(text[i:i + 2], 16) / 255 for i in (0, 2, 4))


def thumbnail_rgb(catalog: Catalog, url: str, max_size: int = THUMBNAIL_MAX):
    """An (h, w, 3) uint8 composite of the lowest resolution level of the OME-Zarr image at
    ``url``: first timepoint, middle z plane, every channel (up to 6) in its ``omero`` colour,
    scaled by its display window (else its 0.5-99.5 percentiles); strided to ``max_size``."""
    import numpy as np

    from bioimage_gateway.catalogs.zarr import describe_image, open_image

    description = describe_image(catalog, url)
    level = description.levels[-1]
    array = open_image(catalog, url)[level.path]
    names = [a["name"] for a in description.axes]
    index: list[Any] = []
    for name, size in zip(names, level.shape):
        if name == "t":
            index.append(0)
        elif name == "z":
            index.append(size // 2)
        elif name == "c":
            index.append(slice(0, min(size, 6)))
        elif name in ("y", "x"):
            step = max(1, -(-size // max_size))
            index.append(slice(None, None, step))
        else:
            index.append(0)
    data = np.asarray(array[tuple(index)], dtype=np.float64)
    kept = [n for n, i in zip(names, index) if isinstance(i, slice)]
    if "c" not in kept:
        data = data[np.newaxis]
    else:
        data = np.moveaxis(data, kept.index("c"), 0)
    while data.ndim > 3:  # axes of unknown names: first element
        data = data[..., 0]
    return composite_rgb(data, description.channels)


def composite_rgb(data, channels, active=None):
    """An (h, w, 3) uint8 image of (c, h, w) planes: each channel in its ``omero`` colour,
    scaled by its display window (else its 0.5-99.5 percentiles); one channel in grey.
    ``active``: the channel indices to show (default all)."""
    import numpy as np

    rgb = np.zeros(data.shape[1:] + (3,), dtype=np.float64)
    single = data.shape[0] == 1
    for i, plane in enumerate(data):
        if active is not None and i not in active:
            continue
        channel = channels[i] if i < len(channels) else None
        window = (channel.window or {}) if channel else {}
        low, high = window.get("start"), window.get("end")
        if low is None or high is None or high <= low:
            low, high = np.percentile(plane, [0.5, 99.5]) if plane.size else (0, 1)
        scaled = np.clip((plane - low) / ((high - low) or 1), 0, 1)
        colour = (1.0, 1.0, 1.0) if single else _hex_rgb(channel.color if channel else None, i)
        rgb += scaled[..., np.newaxis] * np.asarray(colour)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


# --- the model -------------------------------------------------------------------------------

@dataclass
class Crumb:
    label: str
    root: int | None  # index into roots; None for the top (the list of catalogs)
    url: str | None


@dataclass
class Details:
    entry: Entry
    rembi: dict = field(default_factory=dict)
    size: int | None = None
    checksum: str | None = None
    staged: str = "not staged"
    image: dict | None = None  # axes, levels (shape, dtype, bytes), channels
    error: str | None = None


def parse_query(text: str) -> dict[str, str]:
    """``"organism=Mus musculus, modality=light-sheet"`` -> ``{"organism": "Mus musculus", ...}``
    (ValueError for a term without ``=``)."""
    query: dict[str, str] = {}
    for term in (t for t in re.split(r"[,;\n]", text) if t.strip()):
        key, eq, value = term.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"a search term is key=value: {term.strip()!r}")
        query[key.strip()] = value.strip()
    return query


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class BrowserModel:
    """Navigation, paging, search, selection, details and snippets, with no widgets.

    ``entries`` is what is listed now (the pages read so far), ``has_more`` whether the
    listing goes on; ``crumbs`` the path from the top; ``snippet`` the Python line of the
    last action; ``error`` what went wrong in it (a catalog refusal, a bad query)."""

    def __init__(self, roots: Sequence[Root], page_size: int = PAGE_SIZE, *,
                 staging_cache_dir: str | os.PathLike | None = None):
        self.roots = list(roots)
        self.page_size = page_size
        self.staging_cache_dir = staging_cache_dir
        self.crumbs: list[Crumb] = []
        self.entries: list[Entry] = []
        self.has_more = False
        self.selected: Entry | None = None
        self.query: dict[str, str] | None = None
        self.snippet = ""
        self.error: str | None = None
        self.signing_in: int | None = None  # the root waiting for the user's credentials
        self._iterator: Iterator[Entry] | None = None
        self.go_top()

    # ---- where we are ---------------------------------------------------------------------

    @property
    def root(self) -> Root | None:
        here = self.crumbs[-1] if self.crumbs else None
        return None if here is None or here.root is None else self.roots[here.root]

    @property
    def url(self) -> str | None:
        return self.crumbs[-1].url if self.crumbs else None

    @property
    def breadcrumbs(self) -> list[str]:
        return [c.label for c in self.crumbs]

    def _root_entries(self) -> list[Entry]:
        return [Entry(r.url, r.label, "collection") for r in self.roots]

    def go_top(self) -> None:
        self.crumbs = [Crumb("Catalogs", None, None)]
        self.signing_in = None
        self.query = None
        self.selected = None
        self.error = None
        self._iterator = None
        self.entries = self._root_entries()
        self.has_more = False
        self.snippet = "from bioimage_gateway.catalogs import open_catalog"

    def _start_listing(self, iterator: Iterator[Entry]) -> None:
        self._iterator = iterator
        self.entries = []
        self.has_more = True
        self.selected = None
        self.more()

    def _listing(self, root: Root, url: str) -> Iterator[Entry]:
        from bioimage_gateway.catalogs.zarr import classify
        entries = root.catalog.list(url)
        if root.catalog.scheme == "irods":  # iRODS does not mark OME-Zarr images itself
            return (classify(root.catalog, e) for e in entries)
        return iter(entries)

    def open(self, index: int) -> None:
        """Open the listed entry ``index``: a catalog or collection is entered (its first page
        listed); an image or object is selected."""
        entry = self.entries[index]
        if len(self.crumbs) == 1 and self.crumbs[0].root is None and self.query is None:
            self._enter(index, entry.url, entry.name)
            return
        if entry.kind == "collection":
            self._enter(self.crumbs[-1].root, entry.url, entry.name)
        else:
            self.select(index)

    def _enter(self, root_index: int, url: str, label: str) -> None:
        root = self.roots[root_index]
        self.error = None
        if root.catalog is None:
            self.signing_in = root_index
            self.error = f"{root.label} needs you to sign in with your {root.label} username and password"
            return
        try:
            iterator = self._listing(root, url)
        except CatalogError as exc:
            self.error = str(exc)
            return
        self.crumbs.append(Crumb(label, root_index, url))
        self.query = None
        self._start_listing(iterator)
        self.snippet = f"[e.name for e in {root.var}.list({url!r})]"

    def sign_in(self, username: str, password: str) -> None:
        """Open the catalog waiting for credentials and list it; a refusal leaves it closed."""
        index = self.signing_in
        if index is None:
            return
        root = self.roots[index]
        if not username or not password:
            self.error = "give both a username and a password"
            return
        try:
            root.catalog = root.sign_in(username, password)
        except (CatalogError, ValueError) as exc:
            self.error = f"{root.label} sign-in failed: {exc}"
            return
        root.url = root.catalog.url()
        self.signing_in = None
        self._enter(index, root.url, root.label)

    def go_to(self, depth: int) -> None:
        """Back to breadcrumb ``depth`` (0: the list of catalogs)."""
        if depth <= 0:
            self.go_top()
            return
        target = self.crumbs[depth]
        self.crumbs = self.crumbs[:depth]
        self._enter(target.root, target.url, target.label)
        if self.error:  # could not re-list: keep the crumb anyway, with nothing listed
            self.crumbs.append(target)
            self.entries, self.has_more, self._iterator, self.selected = [], False, None, None

    def up(self) -> None:
        self.go_to(len(self.crumbs) - 2)

    def more(self) -> int:
        """Read the next page of the listing; returns how many entries came."""
        if self._iterator is None or not self.has_more:
            return 0
        self.error = None
        page: list[Entry] = []
        try:
            page = list(itertools.islice(self._iterator, self.page_size))
        except CatalogError as exc:
            self.error = str(exc)
            self.has_more = False
            return 0
        self.entries.extend(page)
        if len(page) < self.page_size:
            self.has_more = False
            self._iterator = None
        else:  # look one ahead, so "More" is offered only when there is more
            try:
                following = next(self._iterator)
            except StopIteration:
                self.has_more = False
                self._iterator = None
            except CatalogError as exc:
                self.error = str(exc)
                self.has_more = False
            else:
                self._iterator = itertools.chain([following], self._iterator)
        return len(page)

    def search(self, text: str) -> None:
        """Entries below the current collection (or the whole catalog at its top) whose metadata
        has every ``key=value`` of ``text``."""
        root = self.root
        self.error = None
        if root is None:
            self.error = "open a catalog first: the search looks below the current collection"
            return
        try:
            query = parse_query(text)
            if not query:
                raise ValueError("a search needs at least one key=value")
            iterator = root.catalog.search(query, under=self.url)
        except (ValueError, CatalogError) as exc:
            self.error = str(exc)
            return
        self.query = query
        self._start_listing(iter(iterator))
        self.snippet = f"[e.url for e in {root.var}.search({query!r}, under={self.url!r})]"

    def clear_search(self) -> None:
        if self.query is not None:
            here = self.crumbs.pop()
            self._enter(here.root, here.url, here.label)

    # ---- selection and details ------------------------------------------------------------

    def select(self, index: int | None) -> None:
        self.selected = None if index is None else self.entries[index]
        if self.selected is not None and self.root is not None:
            self.snippet = self.snippets()["details"]

    def _staged(self, url: str) -> str:
        from bioimage_gateway.staging import StagingError, status
        try:
            found = status(url, cache_dir=self.staging_cache_dir)
        except StagingError:
            return "not staged"
        except OSError as exc:
            return f"unknown ({exc})"
        found = found if isinstance(found, list) else [found]
        return "; ".join(f"{d.get('state')} at {d.get('path')}" for d in found)

    def details(self, entry: Entry | None = None) -> Details:
        """What the details pane shows for ``entry`` (default: the selection)."""
        entry = entry or self.selected
        root = self.root
        if entry is None or root is None:
            raise ValueError("nothing selected")
        from bioimage_gateway.catalogs.rembi import to_rembi
        out = Details(entry, size=entry.size, checksum=entry.checksum)
        problems = []
        try:
            out.rembi = to_rembi(root.catalog.metadata(entry.url))
        except CatalogError as exc:
            problems.append(f"metadata: {exc}")
        if entry.kind == "object" and out.checksum is None and (entry.size or 0) <= CHECKSUM_MAX_BYTES \
                and root.catalog.scheme != "omero":
            try:
                out.checksum = root.catalog.checksum(entry.url)
            except CatalogError as exc:
                problems.append(f"checksum: {exc}")
        if entry.kind == "image":
            from bioimage_gateway.catalogs.zarr import describe_image
            try:
                d = describe_image(root.catalog, entry.url)
            except (CatalogError, KeyError, ValueError) as exc:
                problems.append(f"image: {exc}")
            else:
                out.image = {
                    "axes": d.axis_names,
                    "levels": [{"path": lv.path, "shape": list(lv.shape), "dtype": lv.dtype,
                                "bytes": lv.nbytes} for lv in d.levels],
                    "channels": [c.name for c in d.channels],
                }
                out.size = d.levels[0].nbytes if d.levels else None
        out.staged = self._staged(entry.url)
        out.error = "; ".join(problems) or None
        return out

    def thumbnail(self, entry: Entry | None = None) -> bytes | None:
        """PNG bytes of the entry's thumbnail: an OME-Zarr image's lowest level, or the
        catalog's own rendering (OMERO); None for other entries."""
        entry = entry or self.selected
        root = self.root
        if entry is None or root is None:
            return None
        if entry.kind == "image":
            return encode_png(thumbnail_rgb(root.catalog, entry.url))
        maker: Callable | None = getattr(root.catalog, "thumbnail", None)
        if maker is not None and entry.kind == "object":
            try:
                return maker(entry.url)
            except CatalogError:
                return None
        return None

    # ---- snippets -------------------------------------------------------------------------

    def lowest_level(self, entry: Entry | None = None) -> int | None:
        entry = entry or self.selected
        if entry is None or entry.kind != "image" or self.root is None:
            return None
        from bioimage_gateway.catalogs.zarr import describe_image
        try:
            return len(describe_image(self.root.catalog, entry.url).levels) - 1
        except (CatalogError, KeyError, ValueError):
            return None

    def snippets(self, entry: Entry | None = None) -> dict[str, str]:
        """Action -> one line of Python doing it, for ``entry`` (default: the selection)."""
        entry = entry or self.selected
        root = self.root
        if root is None:
            return {"catalogs": "from bioimage_gateway.catalogs import open_catalog"}
        out = {"setup": root.setup}
        if self.url:
            out["list"] = f"[e.name for e in {root.var}.list({self.url!r})]"
        if entry is None:
            return out
        u = entry.url
        out["details"] = f"to_rembi({root.var}.metadata({u!r}))"
        out["metadata"] = out["details"]
        if entry.kind == "image":
            level = self.lowest_level(entry)
            levels = f", levels=[{level}]" if level is not None else ""
            out["stage"] = f"stage({u!r}{levels})"
            out["open"] = f"open_image({root.var}, {u!r})"
            out["describe"] = f"describe_image({root.var}, {u!r})"
            out["napari"] = napari_snippet(u)
        elif entry.kind == "object":
            out["stage"] = f"stage({u!r})"
            out["checksum"] = f"{root.var}.checksum({u!r})"
        else:
            out["stage"] = f"stage({u!r})"
        out["staged"] = f"status({u!r})"
        return out

    def imports(self) -> str:
        return ("from bioimage_gateway.catalogs import open_catalog; "
                "from bioimage_gateway.catalogs.rembi import to_rembi; "
                "from bioimage_gateway.catalogs.zarr import describe_image, open_image; "
                "from bioimage_gateway.staging import stage, status; " + NAPARI_IMPORT)


# --- the view --------------------------------------------------------------------------------

def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def details_html(details: Details) -> str:
    """The details pane: every value from a catalog escaped."""
    e = details.entry
    rows = [("Name", e.name), ("Address", e.url), ("Kind", e.kind),
            ("Size", human_bytes(details.size)), ("Checksum", details.checksum or "none recorded"),
            ("Staged", details.staged)]
    if e.modified is not None:
        rows.append(("Modified", e.modified.isoformat(sep=" ", timespec="seconds")))
    if details.image:
        img = details.image
        rows.append(("Axes", img["axes"]))
        rows.append(("Channels", ", ".join(img["channels"])))
        for lv in img["levels"]:
            rows.append((f"Level {lv['path']}", f"{' x '.join(map(str, lv['shape']))} {lv['dtype']} "
                                                f"({human_bytes(lv['bytes'])})"))
    parts = ["<table class='bg-details'>"]
    parts += [f"<tr><th style='text-align:left'>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows]
    parts.append("</table>")
    for section, fields in details.rembi.items():
        parts.append(f"<b>{_esc(section.replace('_', ' ').capitalize())}</b><table>")
        for key, value in fields.items():
            text = ", ".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"<tr><th style='text-align:left'>{_esc(key)}</th><td>{_esc(text)}</td></tr>")
        parts.append("</table>")
    if details.error:
        parts.append(f"<div style='color:#b00'>{_esc(details.error)}</div>")
    return "".join(parts)


ICONS = {"collection": "\U0001F4C1", "image": "\U0001F5BC", "object": "\U0001F4C4"}


class DataBrowser(w.VBox):
    """The widget: ``DataBrowser()`` in a notebook cell (or ``DataBrowser(catalogs={"iRODS":
    (catalog, "irods://zone/home/alice")})``). ``.model`` is the :class:`BrowserModel`;
    the buttons call it and redraw."""

    def __init__(self, catalogs=None, page_size: int = PAGE_SIZE, *,
                 staging_cache_dir: str | os.PathLike | None = None):
        roots = default_roots() if catalogs is None else _as_roots(catalogs)
        self.model = BrowserModel(roots, page_size, staging_cache_dir=staging_cache_dir)
        self.crumb_bar = w.HBox([])
        self.listing = w.Select(options=[], rows=15, layout=w.Layout(width="45%"))
        self.open_button = w.Button(description="Open", tooltip="Open the collection, or show the entry")
        self.up_button = w.Button(description="Up")
        self.more_button = w.Button(description="More", tooltip=f"List the next {page_size} entries")
        self.search_box = w.Text(placeholder="key=value, key2=value2", description="Search")
        self.search_button = w.Button(description="Search")
        self.clear_button = w.Button(description="Clear search")
        self.count = w.HTML()
        self.details = w.HTML()
        # Hidden while there is no thumbnail: an empty image shows as a broken icon.
        self.thumbnail = w.Image(format="png", layout=w.Layout(max_width="256px", display="none"))
        self.snippet = w.Text(description="Python", layout=w.Layout(width="100%"))
        self.snippet_list = w.HTML()
        self.error = w.HTML()
        self.stage_button = w.Button(description="Stage...", disabled=True,
                                     tooltip="Choose levels, channels and timepoints to put on scratch")
        self.stage_area = w.VBox([])
        self.sign_in_user = w.Text(value=os.environ.get("USER", ""), description="Username")
        self.sign_in_password = w.Password(description="Password")
        self.sign_in_button = w.Button(description="Sign in")
        self.sign_in_box = w.HBox([self.sign_in_user, self.sign_in_password, self.sign_in_button],
                                  layout=w.Layout(display="none"))
        self.sign_in_button.on_click(lambda _b: self.sign_in())
        self.stage_button.on_click(lambda _b: self.show_stager())
        self.napari_button = w.Button(description="Open in napari", disabled=True,
                                      tooltip="Open the image in napari on the session's desktop "
                                              "(catalog images: their staged copy)")
        self.napari_button.on_click(lambda _b: self.open_in_napari())
        self.napari_viewer = None  # the napari.Viewer the button opened last
        self.open_button.on_click(lambda _b: self.open_selected())
        self.up_button.on_click(lambda _b: self._do(self.model.up))
        self.more_button.on_click(lambda _b: self._do(self.model.more))
        self.search_button.on_click(lambda _b: self._do(self.model.search, self.search_box.value))
        self.clear_button.on_click(lambda _b: self._do(self.model.clear_search))
        self.listing.observe(self._on_select, names="value")
        super().__init__([
            self.crumb_bar,
            w.HBox([self.search_box, self.search_button, self.clear_button]),
            w.HBox([w.VBox([self.listing, w.HBox([self.open_button, self.up_button, self.more_button]),
                            self.count], layout=w.Layout(width="45%")),
                    w.VBox([self.thumbnail, w.HBox([self.stage_button, self.napari_button]),
                            self.details],
                           layout=w.Layout(width="55%"))]),
            self.stage_area, self.snippet, self.snippet_list, self.error, self.sign_in_box,
        ])
        self._redraw()

    # ---- actions --------------------------------------------------------------------------

    def _do(self, action, *args) -> None:
        action(*args)
        self._redraw()

    def sign_in(self) -> None:
        """What "Sign in" does; the password field is cleared whatever the outcome."""
        password, self.sign_in_password.value = self.sign_in_password.value, ""
        self._do(self.model.sign_in, self.sign_in_user.value.strip(), password)

    def open_selected(self) -> None:
        if self.listing.value is None:
            return
        self._do(self.model.open, self.listing.value)

    def select(self, index: int) -> None:
        """What clicking a listed entry does."""
        self.listing.value = index

    def open_entry(self, index: int) -> None:
        """Select the entry, then click "Open"."""
        self.select(index)
        self.open_selected()

    def _on_select(self, change) -> None:
        index = change["new"]
        if index is None or index >= len(self.model.entries):
            return
        if self.model.root is None:  # the list of catalogs: nothing to show but the snippet
            self.details.value = ""
            return
        self.model.select(index)
        self._show_selection()

    # ---- drawing --------------------------------------------------------------------------

    def _redraw(self) -> None:
        m = self.model
        buttons = []
        for depth, label in enumerate(m.breadcrumbs):
            b = w.Button(description=label, tooltip=label, layout=w.Layout(width="auto"))
            b.on_click(lambda _b, d=depth: self._do(m.go_to, d))
            buttons.append(b)
        if m.query is not None:
            buttons.append(w.Button(description="search: " + ", ".join(f"{k}={v}" for k, v in m.query.items()),
                                    disabled=True, layout=w.Layout(width="auto")))
        self.crumb_bar.children = buttons
        self.listing.unobserve(self._on_select, names="value")
        self.listing.options = [(f"{ICONS.get(e.kind, '')} {e.name}", i) for i, e in enumerate(m.entries)]
        self.listing.value = None
        self.listing.observe(self._on_select, names="value")
        self.more_button.disabled = not m.has_more
        self.up_button.disabled = len(m.crumbs) <= 1
        self.clear_button.disabled = m.query is None
        shown = f"{len(m.entries)} entr{'y' if len(m.entries) == 1 else 'ies'}"
        self.count.value = _esc(shown + (" (more to list)" if m.has_more else ""))
        self.snippet.value = m.snippet
        self.error.value = f"<span style='color:#b00'>{_esc(m.error)}</span>" if m.error else ""
        self.sign_in_box.layout.display = "none" if m.signing_in is None else ""
        self.details.value = ""
        self.thumbnail.value = b""
        self.thumbnail.layout.display = "none"
        self.stage_button.disabled = True
        self.napari_button.disabled = True
        self.stage_area.children = []
        self.snippet_list.value = self._snippets_html()

    def show_stager(self) -> None:
        """What "Stage..." does: a :class:`~bioimage_gateway.widgets.stager.Stager` for the
        selected image, below the browser."""
        from .stager import Stager
        m = self.model
        if m.selected is None or m.selected.kind != "image" or m.root is None:
            return
        try:
            stager = Stager(m.root.catalog, m.selected.url, cache_dir=m.staging_cache_dir,
                            credentials=m.root.credentials)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.error.value = f"<span style='color:#b00'>{_esc(exc)}</span>"
            return
        self.stage_area.children = [stager]
        self.snippet.value = stager.snippet.value

    def open_in_napari(self) -> None:
        """What "Open in napari" does: the "napari" line, ``open_in_napari(url)``."""
        from .napari import open_in_napari
        m = self.model
        if m.selected is None or m.selected.kind != "image":
            return
        self.snippet.value = m.snippets()["napari"]
        self.error.value = ""
        try:
            self.napari_viewer = open_in_napari(m.selected.url, cache_dir=m.staging_cache_dir)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.error.value = f"<span style='color:#b00'>napari: {_esc(exc)}</span>"

    def _snippets_html(self) -> str:
        snippets = self.model.snippets()
        if not snippets:
            return ""
        rows = "".join(f"<tr><th style='text-align:left'>{_esc(k)}</th><td><code>{_esc(v)}</code></td></tr>"
                       for k, v in snippets.items())
        return f"<details><summary>Python for each action</summary><table>{rows}</table></details>"

    def _show_selection(self) -> None:
        m = self.model
        self.error.value = ""
        try:
            d = m.details()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.error.value = f"<span style='color:#b00'>{_esc(exc)}</span>"
            return
        self.details.value = details_html(d)
        try:
            png = m.thumbnail()
        except Exception as exc:  # noqa: BLE001
            png = None
            self.error.value = f"<span style='color:#b00'>thumbnail: {_esc(exc)}</span>"
        self.thumbnail.value = png or b""
        self.thumbnail.layout.display = "" if png else "none"
        self.stage_button.disabled = m.selected is None or m.selected.kind != "image"
        self.napari_button.disabled = self.stage_button.disabled
        self.stage_area.children = []
        self.snippet.value = m.snippet
        self.snippet_list.value = self._snippets_html()


def details_json(details: Details) -> str:
    """The details as JSON (for the REST API)."""
    e = details.entry
    return json.dumps({"url": e.url, "name": e.name, "kind": e.kind, "size": details.size,
                       "checksum": details.checksum, "staged": details.staged, "rembi": details.rembi,
                       "image": details.image, "error": details.error}, default=str)
