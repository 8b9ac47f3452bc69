"""The transfer's fast paths: folders filled whole and renamed into place, POSIX single-pass
copies, pipelined HTTP GETs; each keeps verification, journal and partial-file semantics."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from staging_support import journal_keys

from bioimage_gateway.catalogs.http import HttpCatalog
from bioimage_gateway.catalogs.posix import PosixCatalog
from bioimage_gateway.staging import local_copy
from bioimage_gateway.staging.api import _remove_partials
from bioimage_gateway.staging.plan import Item
from bioimage_gateway.staging.transfer import Fatal, Journal, Progress, Source, transfer


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


def _tree(root: Path, folders: int, per_folder: int) -> list[Item]:
    items = []
    for f in range(folders):
        folder = root / "img" / "0" / str(f)
        folder.mkdir(parents=True)
        for n in range(per_folder):
            data = os.urandom(50 + (f * per_folder + n) % 300)
            (folder / str(n)).write_bytes(data)
            items.append(Item(f"img/0/{f}/{n}", str(folder / str(n)), len(data), None))
    return items


def test_many_local_files_are_copied_by_worker_processes_and_verified(work):
    items = _tree(work / "src", folders=40, per_folder=20)  # 800 files: the worker processes' path
    assert len(items) >= local_copy.MIN_FILES
    wrong = items[123]
    items[123] = Item(wrong.key, wrong.url, wrong.size + 1, None)  # the listing disagrees: never verified
    dest = work / "dest"
    dest.mkdir()
    failures, keys, progress = _run(PosixCatalog(recognise_images=False), items, dest)
    assert list(failures) == [wrong.url]
    assert sorted(keys) == sorted(i.key for i in items if i.key != wrong.key)
    for item in items:
        if item.key != wrong.key:
            assert (dest / item.key).read_bytes() == Path(item.url).read_bytes()
    assert not (dest / wrong.key).exists()
    assert not [p for p in dest.rglob("*") if ".part-" in p.name]
    assert progress.objects_done == len(items) - 1
    journal = (dest / "journal.jsonl").read_text()
    digest = hashlib.sha256(Path(items[0].url).read_bytes()).digest()
    assert base64.b64encode(digest).decode() in journal  # the SHA-256 of what was read


def test_a_local_copy_worker_that_dies_leaves_its_folders_to_the_caller(work):
    items = _tree(work / "src", folders=3, per_folder=30)
    out = work / "out" / "img" / "0"
    out.mkdir(parents=True)
    (out / "1").mkdir()  # as if the dying worker had renamed this folder into place already
    jobs = []
    for f in range(3):
        group = [i for i in items if i.key.startswith(f"img/0/{f}/")]
        jobs.append([str(out / f"{f}.part-1"), str(out / str(f)), f"img/0/{f}",
                     [i.key.rsplit("/", 1)[1] for i in group], [i.size for i in group], [i.url for i in group]])
    pool = local_copy.LocalCopyPool(1)
    try:
        assert len(pool) == 1
        pool._all[0].kill()
        pool._all[0].wait()
        answers = pool.fill(jobs)
        assert len(pool) == 0  # the dead worker is not handed out again
    finally:
        pool.close()
    assert [a[0] for a in answers] == ["renamed", "unmade", "renamed"]  # the existing one goes file by file
    for f in (0, 2):
        group = [i for i in items if i.key.startswith(f"img/0/{f}/")]
        assert all((out / str(f) / i.key.rsplit("/", 1)[1]).read_bytes() == Path(i.url).read_bytes() for i in group)
        record = json.loads(answers[f][1])
        assert record["dir"] == f"img/0/{f}" and len(record["objects"]) == 30
    assert not [p for p in out.iterdir() if ".part-" in p.name]


def test_a_stage_killed_during_local_copies_by_workers_resumes_to_an_identical_tree(work):
    src = work / "src"
    items = _tree(src, folders=60, per_folder=25)
    dest = work / "dest"
    dest.mkdir()
    script = ("import sys\n"
              "from pathlib import Path\n"
              "from bioimage_gateway.catalogs.posix import PosixCatalog\n"
              "from bioimage_gateway.staging.plan import Item\n"
              "from bioimage_gateway.staging.transfer import Fatal, Journal, Progress, Source, transfer\n"
              "import json\n"
              "items = [Item(*i) for i in json.loads(sys.argv[1])]\n"
              "dest = Path(sys.argv[2])\n"
              "journal = Journal(dest / 'journal.jsonl')\n"
              "progress = Progress(objects_total=len(items))\n"
              "transfer(Source(PosixCatalog(recognise_images=False), 64 << 20, 16 << 20, 2), items, dest,\n"
              "         journal, progress)\n")
    stage = subprocess.Popen([sys.executable, "-c", script, json.dumps(items), str(dest)])
    deadline = time.monotonic() + 30
    while stage.poll() is None and time.monotonic() < deadline:  # kill -9 once some folders are in place
        if (dest / "journal.jsonl").exists() and (dest / "journal.jsonl").stat().st_size > 0:
            stage.kill()
            break
        time.sleep(0.002)
    stage.wait()
    before = set(journal_keys(dest / "journal.jsonl"))
    assert before, "nothing was recorded before the kill"
    assert len(before) < len(items), "the stage finished before it was killed"
    _remove_partials(dest)
    failures, keys, progress = _run(PosixCatalog(recognise_images=False),
                                    [i for i in items if i.key not in before], dest)
    assert failures == {}
    assert set(keys) == {i.key for i in items}
    for item in items:
        assert (dest / item.key).read_bytes() == Path(item.url).read_bytes()
    assert not [p for p in dest.rglob("*") if ".part-" in p.name]


def test_a_full_disk_stops_the_local_copy_workers_and_leaves_only_verified_folders(work, small_scratch):
    items = _tree(work / "src", folders=40, per_folder=20)  # 800 files, a page each: ~3 MB on tmpfs
    disk = small_scratch("1m")
    dest = disk.root / "dest"
    dest.mkdir()
    with pytest.raises(Fatal, match="the disk is full"):
        _run(PosixCatalog(recognise_images=False), items, dest)
    recorded = set(journal_keys(dest / "journal.jsonl"))
    present = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and p.name != "journal.jsonl"}
    assert not [p for p in dest.rglob("*") if ".part-" in p.name]  # nothing half-written left
    assert recorded and recorded <= present and len(present) < len(items)
    for key in present:  # whatever is at a final name is the source's file, byte for byte
        assert (dest / key).read_bytes() == (work / "src" / key).read_bytes()


def test_local_copy_workers_exit_when_their_stage_is_killed(work):
    script = ("import sys, time\n"
              "from bioimage_gateway.staging.local_copy import LocalCopyPool\n"
              "pool = LocalCopyPool(2)\n"
              "print(' '.join(str(p.pid) for p in pool._all), flush=True)\n"
              "time.sleep(60)\n")
    stage = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in stage.stdout.readline().split()]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    stage.kill()  # kill -9: no clean-up code of the stage runs
    stage.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)], "worker processes outlived the killed stage"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
