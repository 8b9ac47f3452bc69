"""``stage``, ``status``, ``evict``: the cache on scratch, its entries, locks and progress.

Layout: the cache (mode 0700) is ``cache_dir=``, else the ``staging.cache_dir`` of the site's
settings (``staging_settings``: what the spawner passed the session, or gateway.yaml), else
``<scratch>/bioimage-gateway/staging``, ``<scratch>`` being ``$BIOIMAGE_GATEWAY_SCRATCH`` / the
settings' ``scratch_root``/<user> (when ``$BIOIMAGE_GATEWAY_CONFIG`` names a gateway.yaml) /
``~/scratch``. The same settings give the quota and the transfer options (parallelism, retries,
ranges), which arguments override. One entry per source URL and selection, ``<cache>/<key>/``
(``key``: a hash of both), holding

* ``<name>``: the staged copy (``embryo.ome.zarr``, or a file's name);
* ``.entry.json``: the URL and selection (written when the entry is made);
* ``.journal.jsonl``: one line per verified object (see ``transfer.Journal``);
* ``.status.json``: progress (state, bytes, objects, rate, ETA), rewritten while it runs;
* ``.lock``: ``flock``-ed by the process transferring, so a second stage of the same dataset
  waits for the first instead of transferring again;
* ``.staged.json``: the manifest, written last, only when every object is verified: the
  entry is complete. Its modification time is the entry's last use (for LRU eviction).

``dest=DIR`` makes ``DIR`` the entry (the copy is ``DIR/<name>``), outside the cache's quota.

Only what this user made is trusted (``private``): every folder down to an entry is checked
before anything in it is read or written (someone else's, writable by others, a symbolic link:
``UntrustedPath``, naming it and its owner), and the entry's files are opened without following
links and checked to be the user's. An entry that fails is refused, never returned as complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from ..catalogs.names import check_name, name_problem
from ..staging_settings import StagingSettings, load_staging_settings, parse_size
from .errors import InsufficientSpace, StagingError, UntrustedPath, VerificationFailed
from .plan import Plan, normalise_selection, plan
from .private import open_own, own_dir, private_dir, read_own_json
from .transfer import Fatal, Journal, Progress, Source, transfer, write_doc

MANIFEST = ".staged.json"
ENTRY = ".entry.json"
JOURNAL = ".journal.jsonl"
STATUS = ".status.json"
LOCK = ".lock"
JOB = ".job.json"
LOG = ".log"

OPTIONS = tuple(StagingSettings().transfer_options())  # threads, retries, backoff, range_*, fsync


def _settings() -> StagingSettings:
    from ..settings import SettingsError
    try:
        return load_staging_settings()
    except SettingsError as exc:
        raise StagingError(f"the staging settings cannot be used: {exc}") from None


# --- where things go ---------------------------------------------------------------------------

def scratch_dir() -> Path:
    env = os.environ.get("BIOIMAGE_GATEWAY_SCRATCH")
    if env:
        return Path(env).expanduser()
    if os.environ.get("BIOIMAGE_GATEWAY_CONFIG"):
        try:
            from ..settings import load_settings
            user = os.environ.get("USER") or Path.home().name
            return Path(load_settings().scratch_root) / user
        except Exception:  # an unreadable gateway.yaml must not stop staging
            pass
    return Path.home() / "scratch"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    configured = _settings().cache_dir
    if configured:
        return Path(configured)
    return scratch_dir() / "bioimage-gateway" / "staging"


def _make_private_dir(path: Path) -> None:
    """The cache's folder ``path`` (the cache itself or an entry), made where missing and
    checked from ``/`` down (``private.private_dir``), mode 0700."""
    private_dir(path, create=True)
    os.chmod(path, 0o700)


def _make_entry(entry: Path, in_cache: bool) -> None:
    if in_cache:
        _make_private_dir(entry.parent)
        _make_private_dir(entry)
    else:  # dest=: the user chose the place; the folder itself is theirs, not a link
        own_dir(entry, create=True)


def _check_entry(entry: Path, in_cache: bool) -> None:
    """Refuse an entry (or the folders down to it) that someone else made or could change,
    before anything in it is read."""
    if in_cache:
        private_dir(entry)
    else:
        own_dir(entry)


def canonical_url(url: str | os.PathLike) -> str:
    url = os.fspath(url)
    if "://" not in url:  # a local path
        from ..catalogs.posix import PosixCatalog
        url = PosixCatalog.url(os.path.abspath(url))
    return url.rstrip("/") if url.count("/") > 3 else url


def cache_key(url: str, selection: dict) -> str:
    text = json.dumps({"url": canonical_url(url), "selection": selection}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _quota(value) -> int | None:
    if value is None or value == "":
        return _settings().quota
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise StagingError(f"quota: {exc}") from None
    if not isinstance(size, int) or size < 1:
        raise StagingError(f"quota: {value!r} is not a size (a number of bytes, or 500G, 2T...)")
    return size


def _read_json(path: Path) -> dict | None:
    """One of the entry's documents; None when missing or torn; ``UntrustedPath`` when it is not
    the user's own file (a link, someone else's)."""
    return read_own_json(path)


def _write_json(path: Path, doc: dict, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}-{threading.get_ident()}")
    fd = open_own(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _activity_dir() -> Path:
    try:
        from ..extensions.activity import ACTIVE_DIR
        return Path(ACTIVE_DIR)
    except Exception:  # tornado missing (no Jupyter here): the same place
        return Path(os.environ.get("BIOIMAGE_GATEWAY_ACTIVE_DIR",
                                   Path.home() / ".local/state/bioimage-gateway/active"))


def _activity_interval() -> float:
    return float(os.environ.get("BIOIMAGE_GATEWAY_ACTIVITY_INTERVAL", "60"))


@contextmanager
def _locked(entry: Path, wait: bool = True):
    """The entry's lock; yields True when held, False when another process holds it (wait=False)."""
    fd = open_own(entry / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _is_locked(entry: Path) -> bool:
    if not os.path.lexists(entry / LOCK):
        return False
    with _locked(entry, wait=False) as held:
        return not held


# --- entries -----------------------------------------------------------------------------------

def _entries(root: Path) -> list[Path]:
    """The cache's entries; ``UntrustedPath`` for one that is a link or someone else's (a
    trusted cache cannot hold one: it is refused, not skipped)."""
    private_dir(root)
    try:
        children = sorted(root.iterdir())
    except FileNotFoundError:
        return []
    out = []
    for child in children:
        if os.path.lexists(child / ENTRY) or child.is_symlink():
            own_dir(child, private=True)
            out.append(child)
    return out


def _entry_size(entry: Path) -> int:
    manifest = _read_json(entry / MANIFEST)
    if manifest and isinstance(manifest.get("bytes"), int):
        return manifest["bytes"]
    total = 0
    for folder, _, files in os.walk(entry):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def _complete(entry: Path) -> dict | None:
    manifest = _read_json(entry / MANIFEST)
    if manifest and manifest.get("complete"):
        name = check_name(manifest.get("name"), str(entry / MANIFEST))
        if _copy_info(entry / name) is not None:
            return manifest
    return None


def _copy_info(data: Path) -> os.stat_result | None:
    """``lstat`` of a staged copy (None: there is none); a symbolic link there is refused:
    staging never makes one, so it is not the copy the entry records."""
    try:
        info = os.lstat(data)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise UntrustedPath(f"refused {data}: the staged copy is a symbolic link, which staging never makes; "
                            f"remove it and stage again", data)
    return info


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _free_bytes(path: Path) -> tuple[int, int]:
    """Bytes free to this user where ``path`` will be, and the file system's block size."""
    info = os.statvfs(_nearest_existing(path))
    return info.f_bavail * info.f_frsize, info.f_frsize or 4096


def _on_disk(sizes, block: int) -> int:
    """What files of these sizes take on a file system of ``block``-byte blocks: each file whole
    blocks (10 000 chunks of 450 bytes take 40 MB with 4 KiB blocks, not 4.5 MB)."""
    return sum(-(-size // block) * block for size in sizes)


def _open_source_catalog(url: str, credentials: dict, threads: int):
    from ..catalogs import open_catalog
    from ..catalogs.posix import PosixCatalog
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        credentials = {"pool_maxsize": max(threads, 4), **credentials}
    if scheme == "file":
        return PosixCatalog(recognise_images=False)
    return open_catalog(url, **credentials)


# --- stage -------------------------------------------------------------------------------------

def stage(url: str | os.PathLike, levels=None, channels=None, timepoints=None, bbox=None,
          dest: str | os.PathLike | None = None, *, background: bool = False,
          cache_dir: str | os.PathLike | None = None, quota: int | str | None = None,
          catalog=None, progress: bool = False, **options) -> Path:
    """Copy ``url`` (or the selection of it: OME-Zarr ``levels``, ``channels``, ``timepoints``,
    ``bbox``; see ``staging.plan``) onto scratch, verified, and return the local path.

    A complete copy of the same selection is returned at once (no request). An interrupted one
    is resumed: objects verified before are not fetched again. ``background=True`` runs the
    transfer in a detached process (it survives the kernel) and returns the path at once;
    ``status(path)`` tells how far it is, ``wait(path)`` waits for it.

    ``quota`` (bytes, or ``"50G"``; default the site's ``staging.quota``) bounds the cache:
    least recently used complete entries are evicted to make room. Other keyword arguments
    are the catalog's credentials (``host``, ``port``, ``user``, ``zone``, ``password``,
    ``auth``...) or transfer options (``threads``, ``retries``, ``backoff``,
    ``range_threshold``, ``range_size``, ``range_threads``, ``fsync``; defaults from the site's
    ``staging:`` settings)."""
    url = canonical_url(url)
    selection = normalise_selection(levels, channels, timepoints, bbox)
    settings = {k: options.pop(k) for k in list(options) if k in OPTIONS}
    credentials = options
    key = cache_key(url, selection)
    in_cache = dest is None
    entry = (cache_root(cache_dir) / key) if in_cache else Path(dest).expanduser().absolute()

    _check_entry(entry, in_cache)
    done = _complete(entry)
    if done is not None and done.get("key") == key:
        os.utime(entry / MANIFEST, follow_symlinks=False)  # last use, for LRU eviction
        return entry / done["name"]

    if background:
        return _start_background(url, selection, entry, key, in_cache, cache_dir, quota, credentials,
                                 settings)
    return _stage_here(url, selection, entry, key, in_cache, cache_dir, quota, credentials, settings,
                       catalog=catalog, show=progress)


def _start_background(url, selection, entry, key, in_cache, cache_dir, quota, credentials, settings) -> Path:
    _make_entry(entry, in_cache)
    name = _entry_name(entry, url)
    _write_json(entry / ENTRY, {"url": url, "selection": selection, "key": key, "name": name})
    job = {"url": url, "selection": selection, "dest": None if in_cache else str(entry),
           "cache_dir": str(cache_dir) if cache_dir else None, "quota": quota,
           "credentials": credentials, "options": settings}
    _write_json(entry / JOB, job, mode=0o600)
    previous = _read_json(entry / STATUS)
    # A "running" record of a process that died (killed, node rebooted) is stale: queued again.
    if not previous or previous.get("state") != "running" or not _pid_alive(previous.get("pid")):
        _write_json(entry / STATUS, {"state": "queued", "url": url, "key": key, "path": str(entry / name),
                                     "updated": time.time()})
    log = open_own(entry / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        subprocess.Popen([sys.executable, "-m", "bioimage_gateway.staging", "run", str(entry / JOB)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True)
    finally:
        os.close(log)
    return entry / name


def _pid_alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError):
        return False


def _entry_name(entry: Path, url: str) -> str:
    known = _read_json(entry / ENTRY)
    if known and known.get("name"):
        return check_name(known["name"], str(entry / ENTRY))
    from urllib.parse import unquote, urlsplit
    return check_name(unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]) or "data", url)


def run_job(job_file: str | os.PathLike) -> Path:
    """Run a background job (``python -m bioimage_gateway.staging run <job.json>``)."""
    job = read_own_json(job_file)  # the user's own file, not a link: it says what to stage where
    try:
        Path(job_file).unlink()  # it may hold a password: gone before anything can report completion
    except FileNotFoundError:
        pass
    if job is None:
        raise StagingError(f"no staging job in {job_file}")
    selection = job["selection"]
    url = job["url"]
    key = cache_key(url, selection)
    in_cache = job.get("dest") is None
    entry = (cache_root(job.get("cache_dir")) / key) if in_cache else Path(job["dest"])
    try:
        return _stage_here(url, selection, entry, key, in_cache, job.get("cache_dir"), job.get("quota"),
                           job.get("credentials") or {}, job.get("options") or {})
    finally:
        try:
            (entry / JOB).unlink()  # it may hold a password
        except FileNotFoundError:
            pass


def _stage_here(url, selection, entry: Path, key, in_cache, cache_dir, quota, credentials, settings, *,
                catalog=None, show=False) -> Path:
    opts = {**_settings().transfer_options(), **settings}
    _check_entry(entry, in_cache)
    own_catalog = catalog is None
    if own_catalog:
        catalog = _open_source_catalog(url, credentials, opts["threads"])
    try:
        the_plan = plan(catalog, url, selection, threads=opts["threads"])
        journal_done = Journal.load(entry / JOURNAL) if os.path.lexists(entry / ENTRY) else {}
        _check_space(the_plan, entry, journal_done, in_cache, cache_dir, quota)
        _make_entry(entry, in_cache)
        if (_read_json(entry / MANIFEST) or {"key": key}).get("key") != key:
            raise StagingError(f"{entry} holds another staged dataset; choose an empty destination")
        _write_json(entry / ENTRY, {"url": url, "selection": selection, "key": key, "name": the_plan.name})
        with _locked(entry):
            done = _complete(entry)
            if done is not None:  # another process finished it while we waited
                os.utime(entry / MANIFEST, follow_symlinks=False)
                return entry / done["name"]
            return _transfer_locked(catalog, the_plan, url, selection, entry, key, opts, show)
    finally:
        if own_catalog:
            catalog.close()


def _check_space(the_plan: Plan, entry: Path, journal_done: dict, in_cache: bool, cache_dir, quota) -> None:
    """The quota (bytes of data) and the free space (blocks the files will take, and a block per
    folder) are checked before anything is written; the error names the sizes."""
    verified = sum(r.get("size", 0) for r in journal_done.values())
    needed = max(0, the_plan.total_bytes - verified)
    limit = _quota(quota) if in_cache else None
    if limit is not None:
        if the_plan.total_bytes > limit:
            raise InsufficientSpace(
                f"staging {the_plan.url} needs {the_plan.total_bytes} bytes, more than the whole staging "
                f"cache quota of {limit} bytes; select less (levels, channels, timepoints) or raise the quota",
                the_plan.total_bytes, limit)
        _evict_for(entry.parent, needed, limit, keep=entry)
    free, block = _free_bytes(entry)
    left = [i for i in the_plan.items if i.key not in journal_done] if journal_done else the_plan.items
    folders = {i.key.rpartition("/")[0] for i in left}
    on_disk = (_on_disk((i.size or 0 for i in left), block) + _on_disk(map(len, the_plan.docs.values()), block)
               + block * (len(folders) + 4))  # + the entry's own files (journal, status, manifest, lock)
    if on_disk > free:
        raise InsufficientSpace(
            f"staging {the_plan.url} needs {on_disk} bytes on disk ({len(left)} objects, {needed} bytes of "
            f"data, in {block}-byte blocks) but {_nearest_existing(entry)} has only {free} bytes free; free "
            f"space, select less (levels, channels, timepoints) or stage elsewhere (dest=)",
            on_disk, free)


def _evict_for(root: Path, needed: int, limit: int, keep: Path) -> None:
    """Evict least recently used complete entries until ``needed`` more bytes fit in ``limit``."""
    entries = [e for e in _entries(root) if e != keep]
    sizes = {e: _entry_size(e) for e in entries}
    used = sum(sizes.values()) + (_entry_size(keep) if os.path.lexists(keep) else 0)
    if used + needed <= limit:
        return
    candidates = sorted((e for e in entries if _complete(e)), key=lambda e: os.lstat(e / MANIFEST).st_mtime)
    for candidate in candidates:
        if used + needed <= limit:
            break
        with _locked(candidate, wait=False) as held:
            if not held:
                continue  # in use
            shutil.rmtree(candidate, ignore_errors=True)
        used -= sizes[candidate]
    if used + needed > limit:
        raise InsufficientSpace(
            f"staging needs {needed} bytes; the staging cache quota is {limit} bytes and {used} are taken by "
            f"entries that cannot be evicted (in use or incomplete); evict some (bioimage-gateway evict KEY)",
            needed, max(0, limit - used))


class _Reporter:
    """Writes ``.status.json`` and touches the activity file while a transfer runs."""

    def __init__(self, entry: Path, base: dict, progress: Progress, show: bool):
        self.entry, self.base, self.progress, self.show = entry, base, progress, show
        self.stop = threading.Event()
        self.active = _activity_dir() / f"staging-{base['key']}"
        self.interval = min(1.0, _activity_interval() / 2)
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def write(self, state: str, **extra) -> dict:
        doc = {**self.base, "state": state, "pid": os.getpid(), "updated": time.time(),
               **self.progress.snapshot(), **extra}
        try:
            _write_json(self.entry / STATUS, doc)
        except OSError:  # the disk is full: no room for a new file, perhaps for the same one rewritten
            try:
                fd = open_own(self.entry / STATUS, os.O_WRONLY | os.O_TRUNC)
                with os.fdopen(fd, "w") as f:
                    json.dump(doc, f, default=str)
            except OSError:
                pass  # status() then reports the run by its process: gone means interrupted
        return doc

    def _loop(self):
        while not self.stop.wait(self.interval):
            doc = self.write("running")
            try:
                self.active.touch()
            except OSError:
                pass
            if self.show:
                eta = doc["eta_s"]
                print(f"\r{doc['objects_done']}/{doc['objects_total']} objects, {doc['bytes_done']}/"
                      f"{doc['bytes_total']} bytes, {doc['rate_bytes_per_s'] / 1e6:.1f} MB/s, ETA "
                      f"{'?' if eta is None else f'{eta:.0f} s'}", end="", file=sys.stderr, flush=True)

    def __enter__(self):
        try:
            self.active.parent.mkdir(parents=True, exist_ok=True)
            self.active.touch()
        except OSError:
            pass
        self.write("running")
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        if self.show:
            print(file=sys.stderr)
        try:
            self.active.unlink()
        except OSError:
            pass


def _transfer_locked(catalog, the_plan: Plan, url, selection, entry: Path, key, opts, show) -> Path:
    root = entry
    data = entry / the_plan.name
    verified = Journal.load(entry / JOURNAL)
    if verified or os.path.lexists(entry / JOURNAL):
        _remove_partials(data)  # left by a killed run
    todo, skipped_bytes = [], 0
    for item in the_plan.items:
        record = verified.get(item.key)
        if record is not None and (item.size is None or record.get("size") == item.size):
            try:  # lstat: what the staged copy holds itself, a link would not be its own file
                if os.lstat(root / item.key).st_size == record["size"]:
                    skipped_bytes += record["size"]
                    continue
            except OSError:
                pass
        todo.append(item)
    progress = Progress(objects_total=len(the_plan.items), bytes_total=the_plan.total_bytes,
                        objects_done=len(the_plan.items) - len(todo), bytes_done=skipped_bytes,
                        objects_skipped=len(the_plan.items) - len(todo), bytes_skipped=skipped_bytes)
    base = {"url": url, "key": key, "path": str(data), "selection": selection}
    source = Source(catalog, opts["range_threshold"], opts["range_size"], opts["range_threads"])
    journal = Journal(entry / JOURNAL, fsync=opts["fsync"])
    reporter = _Reporter(entry, base, progress, show)
    try:
        with reporter:
            try:
                failures = transfer(source, todo, root, journal, progress, threads=opts["threads"],
                                    retries=opts["retries"], backoff=opts["backoff"])
            except Fatal as exc:
                journal.close()
                journal = None
                reporter.write("failed", error=str(exc))
                raise StagingError(str(exc)) from None
            if failures:
                first = list(failures.items())[:5]
                lines = "\n".join(f"  {u}: {why}" for u, why in first)
                more = f"\n  ... and {len(failures) - 5} more" if len(failures) > 5 else ""
                message = (f"staging {url} is not complete: {len(failures)} of {len(the_plan.items)} objects "
                           f"could not be fetched and verified:\n{lines}{more}\nThe verified objects are kept; "
                           f"staging again resumes.")
                reporter.write("failed", error=message, failures=len(failures))
                raise VerificationFailed(message, failures)
            manifest = {
                "complete": True, "key": key, "url": url, "selection": selection,
                "resolved": the_plan.selection, "kind": the_plan.kind, "name": the_plan.name,
                "path": str(data), "objects": len(the_plan.items), "bytes": the_plan.total_bytes,
                "levels": the_plan.levels, "completed": datetime.now(timezone.utc).isoformat(),
                "software": dict(_software()),
            }
            try:
                for doc_key, content in the_plan.docs.items():
                    write_doc(root, doc_key, content)
                if journal is not None:
                    journal.close()
                    journal = None
                _write_json(entry / MANIFEST, manifest)
            except OSError as exc:  # the disk full at the very end: every object is kept, resume
                reporter.write("failed", error=f"writing the metadata of {data}: {exc}")
                raise StagingError(f"staging {url}: writing the metadata of {data} failed ({exc}); the "
                                   f"verified objects are kept, staging again resumes") from None
            _fsync_dir(entry)
            reporter.write("complete")
    finally:
        if journal is not None:
            journal.close()
    return data


def _remove_partials(data: Path) -> None:
    info = _copy_info(data)
    if info is None or not stat.S_ISDIR(info.st_mode):
        for p in data.parent.glob(data.name + ".part-*"):
            p.unlink(missing_ok=True)
        return
    for folder, dirs, files in os.walk(data):
        for name in [d for d in dirs if ".part-" in d]:  # a folder being filled whole (transfer)
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            dirs.remove(name)
        for name in files:
            if ".part-" in name:
                try:
                    os.unlink(os.path.join(folder, name))
                except OSError:
                    pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


@lru_cache(maxsize=1)  # the installed versions do not change while a process runs; reading them is slow
def _software() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": sys.version.split()[0]}
    for dist in ("bioimage-gateway", "python-irodsclient", "zarr", "ome-zarr"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


# --- status, wait, evict -----------------------------------------------------------------------

def _find(target: str | os.PathLike | None, cache_dir=None) -> list[Path]:
    root = cache_root(cache_dir)
    if target is None:
        return _entries(root)
    text = os.fspath(target)
    path = Path(text).expanduser()
    if "://" not in text and (path.exists() or path.parent.exists()):
        for candidate in (path, path.parent):
            if os.path.lexists(candidate / ENTRY):
                return [own_dir(candidate)]
    if name_problem(text) is None and os.path.lexists(root / text / ENTRY):  # a key
        private_dir(root)
        return [own_dir(root / text, private=True)]
    url = canonical_url(text) if "://" in text else None
    return [e for e in _entries(root) if url and (_read_json(e / ENTRY) or {}).get("url") == url]


def _entry_status(entry: Path) -> dict:
    info = _read_json(entry / ENTRY) or {}
    manifest = _complete(entry)
    doc = _read_json(entry / STATUS) or {}
    out = {"key": info.get("key", entry.name), "url": info.get("url"), "selection": info.get("selection"),
           "path": str(entry / info.get("name", "")), **{k: v for k, v in doc.items() if k not in ("key",)}}
    if manifest:
        out["state"] = "complete"
        out["bytes_done"] = out["bytes_total"] = manifest["bytes"]
        out["objects_done"] = out["objects_total"] = manifest["objects"]
        out["eta_s"] = 0
    elif out.get("state") in ("running", "queued") and not _is_locked(entry):
        alive = _pid_alive(doc.get("pid"))
        if not (out.get("state") == "queued" and (alive or time.time() - doc.get("updated", 0) < 30)):
            out["state"] = "interrupted"  # its process is gone: staging again resumes
    out.setdefault("state", "incomplete")
    return out


def status(target: str | os.PathLike | None = None, *, cache_dir=None) -> dict | list[dict]:
    """Progress of one staged dataset (a URL, a cache key, or the local path ``stage`` returned):
    ``state`` (queued, running, complete, failed, interrupted), ``bytes_done``/``bytes_total``,
    ``objects_done``/``objects_total``, ``rate_bytes_per_s``, ``eta_s``; with no argument, the
    list for every entry in the cache."""
    entries = _find(target, cache_dir)
    if target is None:
        return [_entry_status(e) for e in entries]
    if not entries:
        raise StagingError(f"nothing staged for {target}")
    found = [_entry_status(e) for e in entries]
    return found[0] if len(found) == 1 else found


def wait(target: str | os.PathLike, timeout: float | None = None, *, cache_dir=None,
         interval: float = 0.2) -> Path:
    """Wait for a (background) stage to complete; returns the path, raises if it failed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        doc = status(target, cache_dir=cache_dir)
        if isinstance(doc, list):
            raise StagingError(f"{target} names {len(doc)} staged datasets; give the key or the path")
        if doc["state"] == "complete":
            return Path(doc["path"])
        if doc["state"] in ("failed", "interrupted"):
            raise StagingError(f"staging {doc.get('url')} {doc['state']}: {doc.get('error', '')}".strip())
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"staging {doc.get('url')} still {doc['state']} after {timeout} s")
        time.sleep(interval)


def evict(target: str | os.PathLike, *, cache_dir=None) -> list[Path]:
    """Remove the cached copies of a URL (every selection of it), or one entry (its key or path).
    An entry being transferred is not removed (``StagingError``). Returns what was removed."""
    entries = _find(target, cache_dir)
    if not entries:
        raise StagingError(f"nothing staged for {target}")
    removed = []
    for entry in entries:
        with _locked(entry, wait=False) as held:
            if not held:
                raise StagingError(f"{entry} is being staged right now; stop it first or evict it later")
            shutil.rmtree(entry)
        removed.append(entry)
    return removed
