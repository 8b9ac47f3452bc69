"""``publish``: results (a file, a folder, an OME-Zarr tree) back to iRODS, verified, with provenance.

* Collections are created first (parents before children), then the files are written in
  parallel (``threads`` at once) through python-irodsclient's pooled connections
  (``data_objects.open(path, "w")``); after each, iRODS is asked for the object's checksum
  (``forceChksum``: computed by the server from what it stored) and it is compared with the local
  file's SHA-256; a mismatch or a broken connection is retried.
* Nothing is overwritten unless ``overwrite=True``: an existing object or collection at the
  target is refused with ``AlreadyExists`` naming it, before anything is written.
* Provenance AVUs go on the published collection (or object): ``prov:wasDerivedFrom`` and
  ``prov:selection`` (from the staged copy's manifest when ``local_path`` is one, or ``source=``),
  ``prov:publishedBy`` (iRODS user and local user), ``prov:publishedAt`` (UTC), ``prov:software``
  (versions), and REMBI Analysed data: ``rembi:analysed_data.derived_from``,
  ``rembi:analysed_data.type`` and, when given, ``rembi:analysed_data.analysis_method``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from ..catalogs.base import CatalogError, CatalogUnavailable, NotFound
from .errors import AlreadyExists, StagingError, VerificationFailed

BLOCK = 4 << 20


def _sha2_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(BLOCK), b""):
            h.update(chunk)
    return "sha2:" + base64.b64encode(h.digest()).decode()


def _staged_manifest(local: Path) -> dict | None:
    """The manifest of the staged copy at ``local`` (``<entry>/<name>`` with ``<entry>/.staged.json``)."""
    from .api import MANIFEST
    for candidate in (local.parent / MANIFEST, local / MANIFEST):
        try:
            manifest = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("name") == local.name:
            return manifest
    return None


def provenance(local: Path, user: str, source: str | None = None, selection: dict | None = None,
               analysis_method: str | None = None, extra: dict | None = None) -> list[tuple[str, str, str]]:
    """The AVUs ``publish`` attaches: ``(attribute, value, units)``."""
    from .api import _software
    manifest = _staged_manifest(local)
    if manifest and source is None:
        source = manifest.get("url")
        selection = selection if selection is not None else manifest.get("resolved") or manifest.get("selection")
    is_image = (local / ".zattrs").exists() or (local / "zarr.json").exists()
    software = "; ".join(f"{k} {v}" for k, v in _software().items())
    avus = [("prov:publishedBy", f"{user} (local user {os.environ.get('USER') or Path.home().name})", ""),
            ("prov:publishedAt", datetime.now(timezone.utc).isoformat(timespec="seconds"), ""),
            ("prov:software", software, ""),
            ("rembi:analysed_data.type", "OME-Zarr image" if is_image else
             ("folder" if local.is_dir() else "file"), "")]
    if source:
        avus += [("prov:wasDerivedFrom", source, ""), ("rembi:analysed_data.derived_from", source, "")]
    if selection:
        avus.append(("prov:selection", json.dumps(selection, sort_keys=True), ""))
    if analysis_method:
        avus.append(("rembi:analysed_data.analysis_method", analysis_method, ""))
    for key, value in (extra or {}).items():
        value, units = value if isinstance(value, tuple) else (value, "")
        avus.append((str(key), str(value), str(units)))
    return [a for a in avus if a[1] != ""]


def publish(local_path: str | os.PathLike, url: str, overwrite: bool = False, *, threads: int = 8,
            retries: int = 3, source: str | None = None, selection: dict | None = None,
            analysis_method: str | None = None, metadata: dict | None = None, catalog=None,
            **credentials) -> str:
    """Upload ``local_path`` (a file or a folder, e.g. an OME-Zarr) to the iRODS address ``url``;
    returns ``url``. See the module's doc."""
    from irods.meta import iRODSMeta
    from irods.models import Collection, DataObject

    from ..catalogs import open_catalog
    from ..catalogs.irods import _translated

    local = Path(local_path).expanduser().absolute()
    if not local.exists():
        raise StagingError(f"nothing to publish at {local}")
    if not url.startswith("irods://"):
        raise StagingError(f"publish writes to iRODS (irods://ZONE/...), not {url}")
    own = catalog is None
    cat = open_catalog(url, **credentials) if own else catalog
    try:
        target = cat.logical_path(url)
        try:
            existing = cat.stat(url)
        except NotFound:
            existing = None
        if existing is not None:
            if not overwrite:
                raise AlreadyExists(f"{cat.url(target)} exists already (an iRODS {existing.kind}); nothing was "
                                    f"written. publish(..., overwrite=True) (--overwrite) replaces it", cat.url(target))
            if (existing.kind == "object") != local.is_file():
                raise StagingError(f"cannot replace the iRODS {existing.kind} {cat.url(target)} with a "
                                   f"{'file' if local.is_file() else 'folder'}")
        session = cat.session

        files: list[tuple[Path, str]] = []
        collections: list[str] = []
        if local.is_file():
            files.append((local, target))
        else:
            for folder, dirs, names in os.walk(local):
                dirs.sort()
                rel = os.path.relpath(folder, local)
                coll = target if rel == "." else f"{target}/{Path(rel).as_posix()}"
                collections.append(coll)
                files += [(Path(folder, n), f"{coll}/{n}") for n in sorted(names)]

        for coll in collections:  # parents first (os.walk is top-down)
            with _translated(cat.url(coll)):
                session.collections.create(coll, recurse=True)

        failures: dict[str, str] = {}

        def upload(pair: tuple[Path, str]) -> None:
            path, logical = pair
            expected = _sha2_file(path)
            last = ""
            for attempt in range(1, retries + 1):
                try:
                    with _translated(cat.url(logical)):
                        with session.data_objects.open(logical, "w", allow_redirect=False,
                                                       auto_close=False) as out, open(path, "rb") as src:
                            for chunk in iter(lambda: src.read(BLOCK), b""):
                                out.write(chunk)
                        got = session.data_objects.chksum(logical, forceChksum="")
                    if got == expected:
                        return
                    last = f"iRODS computed {got}, the local file has {expected}"
                except CatalogUnavailable as exc:
                    last = str(exc)
                except CatalogError as exc:
                    failures[cat.url(logical)] = str(exc)
                    return
                if attempt < retries:
                    time.sleep(0.2 * 2 ** (attempt - 1) * (0.5 + random.random()))
            failures[cat.url(logical)] = f"{last} (after {retries} attempts)"

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(upload, files))
        if failures:
            first = "\n".join(f"  {u}: {why}" for u, why in list(failures.items())[:5])
            raise VerificationFailed(f"publishing {local} to {url}: {len(failures)} of {len(files)} files "
                                     f"failed:\n{first}", failures)

        model = DataObject if local.is_file() else Collection
        for attribute, value, units in provenance(local, cat.user, source, selection, analysis_method, metadata):
            with _translated(cat.url(target)):
                session.metadata.set(model, target, iRODSMeta(attribute, value, units or None))
        return cat.url(target)
    finally:
        if own:
            cat.close()
