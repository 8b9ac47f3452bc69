"""The transfer's fast paths: folders filled whole and renamed into place, POSIX single-pass
copies, pipelined HTTP GETs; each keeps verification, journal and partial-file semantics."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from staging_support import journal_keys

from bioimage_gateway.catalogs.http import HttpCatalog
from bioimage_gateway.catalogs.posix import PosixCatalog
from bioimage_gateway.staging.api import _remove_partials
from bioimage_gateway.staging.plan import Item
from bioimage_gateway.staging.transfer import Journal, Progress, Source, transfer


@pytest.fixture
def work():
    root = Path(tempfile.mkdtemp(prefix="gw-transfer-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(catalog, items, dest: Path, **kw):
    journal = Journal(dest / "journal.jsonl")
    progress = Progress(objects_total=len(items))
    try:
        failures = transfer(Source(catalog, 64 << 20, 16 << 20, 2), items, dest, journal, progress,
                            retries=2, backoff=0.01, **kw)
    finally:
        journal.close()
    keys = journal_keys(dest / "journal.jsonl")
    return failures, keys, progress


def test_a_folder_filled_whole_keeps_its_verified_objects_when_one_fails(work):
    src = work / "src" / "level" / "0"
    src.mkdir(parents=True)
    for i in range(5):
        (src / str(i)).write_bytes(os.urandom(100 + i))
    items = [Item(f"img/level/0/{i}", str(src / str(i)), 100 + i, None) for i in range(5)]
    items[3] = Item(items[3].key, items[3].url, 999, None)  # the listing's size disagrees: never verified
    dest = work / "dest"
    dest.mkdir()
    failures, keys, progress = _run(PosixCatalog(recognise_images=False), items, dest)
    assert list(failures) == [items[3].url] and "999" in failures[items[3].url]
    assert sorted(keys) == sorted(i.key for i in items if i is not items[3])
    for i in (0, 1, 2, 4):
        assert (dest / "img/level/0" / str(i)).read_bytes() == (src / str(i)).read_bytes()
    assert not (dest / "img/level/0/3").exists()
    assert not [p for p in dest.rglob("*") if ".part-" in p.name]
    assert progress.objects_done == 4


def test_a_posix_source_changing_while_copied_is_not_verified(work, monkeypatch):
    src = work / "src"
    src.mkdir()
    (src / "a").write_bytes(b"x" * 10)
    item = Item("d/a", str(src / "a"), 10, None)
    real_read = os.read

    def growing_read(fd, n):  # the file grows after the first read (another writer)
        data = real_read(fd, n)
        with open(src / "a", "ab") as f:
            f.write(b"y")
        return data

    monkeypatch.setattr(os, "read", growing_read)
    dest = work / "dest"
    dest.mkdir()
    failures, keys, _ = _run(PosixCatalog(recognise_images=False), [item], dest)
    assert "changed while it was copied" in failures[item.url]
    assert keys == [] and not (dest / "d/a").exists()


def test_partial_folders_left_by_a_kill_are_removed_on_resume(work):
    data = work / "img"
    (data / "level" / "0.part-123").mkdir(parents=True)
    (data / "level" / "0.part-123" / "7").write_bytes(b"half")
    (data / "level" / "1").mkdir()
    (data / "level" / "1" / "2.part-123").write_bytes(b"half")
    (data / "level" / "1" / "3").write_bytes(b"whole")
    _remove_partials(data)
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == ["level", "level/1", "level/1/3"]


def test_pipelined_http_gets_fall_back_for_what_they_cannot_bring(nginx, site, work):
    folder = site / "embryo.ome.zarr" / "s2" / "0" / "0" / "0" / "0"
    names = sorted(os.listdir(folder))
    items = [Item(f"x/{n}", f"{nginx.url}/embryo.ome.zarr/s2/0/0/0/0/{n}", (folder / n).stat().st_size, None)
             for n in names]
    items.append(Item("x/missing", f"{nginx.url}/embryo.ome.zarr/s2/0/0/0/0/missing", 10, None))
    items += [Item(f"y/{n}", f"{nginx.url}/embryo.ome.zarr/s2/0/0/0/0/{n}", (folder / n).stat().st_size, None)
              for n in names]
    dest = work / "dest"
    dest.mkdir()
    catalog = HttpCatalog()
    try:
        failures, keys, progress = _run(catalog, items, dest, threads=2)
    finally:
        catalog.close()
    assert list(failures) == [items[len(names)].url] and "after 1 attempt" in failures[items[len(names)].url]
    assert sorted(keys) == sorted(i.key for i in items if not i.key.endswith("missing"))
    for n in names:
        assert (dest / "x" / n).read_bytes() == (folder / n).read_bytes() == (dest / "y" / n).read_bytes()
    assert not [p for p in dest.rglob("*") if ".part-" in p.name]


def test_pipelined_listings_give_what_the_catalog_lists_in_a_few_round_trips(nginx, site):
    from bioimage_gateway.staging.plan import _walk_listing, walk

    for url in (f"{nginx.url}/embryo.ome.zarr/", f"{nginx.url}/plain/"):
        catalog = HttpCatalog(recognise_images=False)
        try:
            expected = list(_walk_listing(catalog, url, None, None, 4))
            listed = catalog.requests_made
            assert listed > 10 or url.endswith("/plain/")
            catalog.requests_made = 0
            assert list(walk(catalog, url, threads=4)) == expected
            assert catalog.requests_made == 0  # every listing came through the pipelines
        finally:
            catalog.close()
    assert {key for key, *_ in expected} == {"notes.txt", "sub/table.csv"}


def test_a_server_without_json_listings_is_named_as_before(nginx, site, scratch):
    from bioimage_gateway import staging
    from bioimage_gateway.catalogs.base import Unsupported

    with pytest.raises(Unsupported, match="gives no JSON directory index"):
        staging.stage(f"{nginx.url}/html/")


def test_a_pipeline_reads_listings_chunks_and_errors_and_survives_the_server_closing(nginx, site):
    from bioimage_gateway.staging.http_pipeline import Pipeline

    folder = site / "embryo.ome.zarr" / "s0" / "0" / "0" / "0" / "0"
    names = sorted(os.listdir(folder))
    base = "/embryo.ome.zarr/s0/0/0/0/0/"
    catalog = HttpCatalog()
    pipe = Pipeline(catalog, f"127.0.0.1:{nginx.port}", accept="application/json")
    try:
        got = pipe.get_many([base, base + names[0], "/nothing-here", base + names[1], "/private/x"])
        assert [r is None for r in got] == [False, False, True, False, True]
        import json as _json
        assert sorted(e["name"] for e in _json.loads(got[0].body)) == names  # a chunked body
        assert got[1].body == (folder / names[0]).read_bytes() and not got[1].states_digest()
        assert got[3].body == (folder / names[1]).read_bytes()
        # more requests than nginx serves on one connection (keepalive_requests 1000): it closes
        # the connection, the pipeline opens another and nothing is lost
        many = pipe.get_many([base + names[i % len(names)] for i in range(1200)])
        assert all(r is not None and r.body == (folder / names[i % len(names)]).read_bytes()
                   for i, r in enumerate(many))
    finally:
        pipe.close()
        catalog.close()
