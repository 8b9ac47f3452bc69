"""PosixCatalog on the local file system: browse, metadata (extended attributes), search, open,
checksum, OME-Zarr images shown as images, and bad input each refused with a clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from zarr_support import IMAGE_DIR, RAW, UNICODE_NAME, sha2_of

from bioimage_gateway.catalogs import Entry, InvalidPath, NotFound, PosixCatalog, Unsupported, open_catalog
from bioimage_gateway.catalogs.posix import SearchLimitExceeded
from bioimage_gateway.devstack.irods_standin import sha2 as irods_sha2


@pytest.fixture
def posix():
    return PosixCatalog()


def url(path: Path | str) -> str:
    return PosixCatalog.url(str(path))


@pytest.fixture
def tagged(tmp_path):
    """A small tree with metadata in user.* extended attributes."""
    (tmp_path / "study1" / "deep" / "deeper").mkdir(parents=True)
    (tmp_path / "study2").mkdir()
    files = {"study1/raw.tif": b"raw", "study1/deep/deeper/cells.tif": b"cells", "study2/fish.tif": b"fish"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    tags = {"study1": {"organism": "Mus musculus", "modality": "light-sheet"},
            "study1/raw.tif": {"organism": "Mus musculus", "modality": "confocal",
                               "voxel_size": "0.5", "voxel_size@units": "um"},
            "study1/deep/deeper/cells.tif": {"organism": "Homo sapiens", "modality": "light-sheet"},
            "study2/fish.tif": {"organism": "Danio rerio"}}
    for name, attrs in tags.items():
        for key, value in attrs.items():
            os.setxattr(tmp_path / name, f"user.{key}", value.encode())
    return tmp_path


# --- browse, stat, open, checksum -------------------------------------------------------------

def test_lists_collections_first_then_objects_with_sizes(posix, site):
    entries = list(posix.list(url(site / "study1")))
    assert [(e.name, e.kind, e.size) for e in entries] == [
        ("sub", "collection", None), ("notes.txt", "object", len("light-sheet run 3\n")),
        ("raw.bin", "object", len(RAW))]
    assert all(isinstance(e, Entry) and e.modified is not None for e in entries)
    assert entries[2].url == f"file://{site}/study1/raw.bin"
    # a plain absolute path is accepted as well as a file:// URL (and file://localhost/)
    assert [e.name for e in posix.list(str(site / "study1"))] == ["sub", "notes.txt", "raw.bin"]
    assert posix.stat(f"file://localhost{site}/study1").kind == "collection"


def test_utf8_names_round_trip_through_urls(posix, site):
    [entry] = posix.list(url(site / "unicode"))
    assert entry.name == UNICODE_NAME
    assert entry.url == f"file://{site}/unicode/Zellkern%20%C3%BC%20%231%20&%2010%25%20%E2%9C%93.tif"
    with posix.open(entry.url) as f:
        assert f.read() == b"nucleus"
    assert posix.stat(str(site / "unicode" / UNICODE_NAME)).url == entry.url


def test_open_reads_byte_ranges_and_checksum_matches_irods_form(posix, site):
    raw = url(site / "study1" / "raw.bin")
    with posix.open(raw) as f:
        assert f.seekable() and f.readable()
        f.seek(150_000)
        assert f.read(1000) == RAW[150_000:151_000]
        f.seek(-10, os.SEEK_END)
        assert f.read() == RAW[-10:]
    assert posix.checksum(raw) == sha2_of(RAW) == irods_sha2(RAW)  # same form as iRODS's
    assert posix.stat(raw).size == len(RAW)


def test_an_ome_zarr_folder_is_listed_as_one_image(posix, site):
    [image] = posix.list(url(site / "images"))
    assert (image.name, image.kind) == (IMAGE_DIR, "image")
    assert posix.stat(image.url).kind == "image"
    # inside, it is still a folder of keys, for zarr
    assert {e.name for e in posix.list(image.url)} >= {".zattrs", ".zgroup", "s0", "s1", "s2"}
    [plain] = PosixCatalog(recognise_images=False).list(url(site / "images"))
    assert plain.kind == "collection"


# --- metadata and search ----------------------------------------------------------------------

def test_metadata_are_user_extended_attributes_with_units(posix, tagged):
    assert posix.metadata(url(tagged / "study1" / "raw.tif")) == {
        "modality": [("confocal", "")], "organism": [("Mus musculus", "")], "voxel_size": [("0.5", "um")]}
    assert posix.metadata(url(tagged / "study1")) == {"modality": [("light-sheet", "")],
                                                      "organism": [("Mus musculus", "")]}
    assert posix.metadata(url(tagged / "study2")) == {}


def test_search_matches_extended_attributes_below_a_folder(posix, tagged):
    found = {e.url for e in posix.search({"organism": "Mus musculus"}, under=url(tagged))}
    assert found == {url(tagged / "study1"), url(tagged / "study1" / "raw.tif")}
    both = {e.name for e in posix.search({"organism": "%", "modality": "light-sheet"}, under=str(tagged))}
    assert both == {"study1", "cells.tif"}  # found deep in the tree too
    assert {e.name for e in posix.search({"organism": "Homo%"}, under=str(tagged))} == {"cells.tif"}
    assert list(posix.search({"organism": "Danio rerio"}, under=str(tagged / "study1"))) == []
    with pytest.raises(InvalidPath, match="needs under="):
        posix.search({"organism": "Mus musculus"})
    rooted = PosixCatalog(root=tagged)
    assert {e.name for e in rooted.search({"organism": "Danio rerio"})} == {"fish.tif"}


def test_search_is_bounded_and_skips_zarr_chunks(tagged, site):
    small = PosixCatalog(search_limit=3)
    with pytest.raises(SearchLimitExceeded, match="visited 3 entries.*narrow it"):
        list(small.search({"organism": "Mus musculus"}, under=str(tagged)))
    # the image's hundreds of chunk files are not walked: a few entries suffice for all of site/
    image_files = sum(len(files) for _, _, files in os.walk(site / "images"))
    assert image_files > 100
    few = PosixCatalog(search_limit=40)
    found = list(few.search({"rembi:biosample.organism": "Mus musculus"}, under=str(site)))
    assert [(e.name, e.kind) for e in found] == [(IMAGE_DIR, "image")]


# --- bad input: a clear error, nothing changed --------------------------------------------------

ALL_CALLS = ("list", "stat", "open", "metadata", "checksum")


def _snapshot(root: Path):
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_dot_dot_is_refused_before_touching_the_disk(posix, site):
    before = _snapshot(site / "study1")
    for path in (f"file://{site}/study1/../private/secret.bin", f"{site}/study1/./raw.bin",
                 f"file://{site}/study1/%2E%2E/private", f"{site}/..", b"/tmp/../etc/passwd"):
        for call in ALL_CALLS:
            with pytest.raises(InvalidPath, match=r"'\.\.'"):
                getattr(posix, call)(path)
    with pytest.raises(InvalidPath, match=r"'\.\.'"):
        list(posix.search({"a": "b"}, under=f"{site}/study1/.."))
    assert _snapshot(site / "study1") == before


def test_missing_paths_are_not_found(posix, site):
    for path in (url(site / "nope"), url(site / "study1" / "nope.tif"), f"{site}/study1/raw.bin/inside"):
        for call in ALL_CALLS:
            with pytest.raises(NotFound, match="no such file or directory: file://") as err:
                getattr(posix, call)(path)
            assert err.value.path.startswith("file://")


def test_non_utf8_and_foreign_addresses_are_refused(posix, site):
    for path in (f"file://{site}/study1/bad%FFname.tif", b"/tmp/bad\xffname", "/tmp/bad\udcffname"):
        for call in ALL_CALLS:
            with pytest.raises(InvalidPath, match="not valid UTF-8"):
                getattr(posix, call)(path)
    for path, why in (("file://fileserver/data/x.tif", "must be local"), ("study1/raw.bin", "not an absolute"),
                      ("https://example.org/x", "not a file://"), (f"{site}/a\0b", "NUL"),
                      (f"file://{site}/raw.bin?x=1", "no query")):
        with pytest.raises(InvalidPath, match=why):
            posix.stat(path)


def test_very_long_names_are_refused_with_the_limit_named(posix, site):
    with pytest.raises(InvalidPath, match="256 bytes long; at most 255"):
        posix.stat(f"{site}/{'x' * 256}")
    with pytest.raises(InvalidPath, match="at most 4096"):
        posix.list(str(site) + "/abcdefgh" * 600)
    with pytest.raises(NotFound):  # 255 is allowed, and simply absent
        posix.stat(f"{site}/{'x' * 255}")


def test_names_on_disk_that_are_not_utf8_are_listed_but_refused(posix, tmp_path):
    os.close(os.open(os.path.join(os.fsencode(tmp_path), b"scan-\xff.tif"), os.O_CREAT | os.O_WRONLY))
    (tmp_path / "fine.tif").write_bytes(b"ok")
    entries = {e.name: e for e in posix.list(str(tmp_path))}
    assert set(entries) == {"fine.tif", "scan-\\xff.tif"}
    odd = entries["scan-\\xff.tif"]
    assert odd.url.endswith("/scan-%FF.tif") and odd.kind == "object"
    with pytest.raises(InvalidPath, match="not valid UTF-8"):
        posix.open(odd.url)


def test_directories_cannot_be_opened_or_checksummed(posix, site):
    for call in (posix.open, posix.checksum):
        with pytest.raises(InvalidPath, match="is a directory"):
            call(url(site / "study1"))


CHILD = """
import json, sys
from bioimage_gateway.catalogs import PosixCatalog
catalog, results = PosixCatalog(), {}
for call, path in json.loads(sys.argv[1]):
    try:
        result = getattr(catalog, call)(path)
        results[call + " " + path] = ["ok", repr(list(result) if call == "list" else result)]
    except Exception as exc:
        results[call + " " + path] = [type(exc).__name__, str(exc)]
print(json.dumps(results))
"""


def _as_nobody(calls: list[tuple[str, str]]) -> dict:
    """Run catalog calls in a process of another user (nobody), as a session would."""
    kwargs = dict(user=65534, group=65534, extra_groups=[]) if os.geteuid() == 0 else {}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(calls)], capture_output=True,
                          text=True, timeout=60, cwd="/", env=dict(os.environ), **kwargs)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_another_users_private_folder_is_permission_denied():
    top = Path(tempfile.mkdtemp(prefix="gw-posix-perm-", dir="/tmp"))
    try:
        top.chmod(0o755)
        (top / "private").mkdir(mode=0o700)
        (top / "private" / "secret.tif").write_bytes(b"secret")
        (top / "open.tif").write_bytes(b"public")
        (top / "open.tif").chmod(0o644)
        (top / "locked.tif").write_bytes(b"locked")
        (top / "locked.tif").chmod(0o600)
        private, secret, locked = url(top / "private"), url(top / "private" / "secret.tif"), url(top / "locked.tif")
        calls = [("list", private), ("stat", secret), ("open", secret), ("metadata", secret),
                 ("checksum", secret), ("open", locked), ("checksum", locked),
                 ("checksum", url(top / "open.tif"))]
        results = _as_nobody(calls)
        for call, path in calls[:-1]:
            kind, message = results[f"{call} {path}"]
            assert kind == "PermissionDenied", (call, path, kind, message)
            assert message == f"permission denied: {path}"
        assert results[f"checksum {url(top / 'open.tif')}"] == ["ok", repr(sha2_of(b"public"))]
        assert (top / "private" / "secret.tif").read_bytes() == b"secret"  # nothing changed
    finally:
        shutil.rmtree(top, ignore_errors=True)


# --- choosing a catalog by address ------------------------------------------------------------

def test_open_catalog_picks_the_catalog_by_scheme(site):
    catalog = open_catalog(f"file://{site}/study1")
    assert isinstance(catalog, PosixCatalog)
    assert [e.name for e in catalog.list(f"file://{site}/study1")] == ["sub", "notes.txt", "raw.bin"]
    with pytest.raises(Unsupported, match="no catalog for s3:// addresses"):
        open_catalog("s3://bucket/key")
    with pytest.raises(InvalidPath, match="no scheme.*file:///"):
        open_catalog("/data/x.tif")
