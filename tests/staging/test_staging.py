"""Staging against real clients and servers: the iRODS stand-in (python-irodsclient), Debian's
nginx (HTTP), the local file system; copies checked with ome-zarr's own reader, ome-zarr-models,
napari-ome-zarr's reader and numpy."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from staging_support import (IMAGE, IMAGE_DIR, ZONE, journal_keys, opens, read_with_napari_ome_zarr,
                             read_with_ome_zarr, source_attrs, source_levels, staged_files)

from bioimage_gateway import staging

SELECTION = dict(levels=[0, 2], channels=["membrane"], timepoints="1:3")


def test_stage_selection_from_irods_is_a_valid_ome_zarr_equal_to_the_source_selection(irods, site, scratch):
    path = staging.stage(irods.image_url, **SELECTION, **irods.credentials)

    assert path.name == IMAGE_DIR and path.is_dir()
    metadata, levels = read_with_ome_zarr(path)
    source = source_levels(site)
    assert len(levels) == 2
    assert np.array_equal(levels[0], source[0][1:3, 1:2])
    assert np.array_equal(levels[1], source[2][1:3, 1:2])
    assert metadata["channel_names"] == ["membrane"]
    datasets = json.loads((path / ".zattrs").read_text())["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["s0", "s2"]
    # the time range starts at 1: a translation says so
    assert datasets[0]["coordinateTransformations"][1]["translation"][0] == 1.0
    # only what was selected is on disk: no level s1, no channel 0, no timepoint 0
    files = staged_files(path)
    assert not any(f.startswith("s1/") for f in files)
    assert all(f.split("/")[1:3] in (["0", "0"], ["1", "0"]) for f in files if f.startswith("s0/") and
               f.count("/") == 5)
    # an independent validator agrees
    from ome_zarr_models.v04 import Image
    Image.from_zarr(zarr.open_group(str(path), mode="r"))
    # and napari-ome-zarr gives napari one layer per staged channel, with the source's data, name,
    # colour, contrast window and pixel size (it reads the first level's scale, not translations)
    (data, meta, kind), = read_with_napari_ome_zarr(path)
    attrs = source_attrs(site)
    membrane = attrs["omero"]["channels"][1]
    assert kind == "image" and meta["channel_axis"] == 1
    assert [d.shape for d in data] == [levels[0].shape, levels[1].shape]
    assert np.array_equal(data[0], source[0][1:3, 1:2]) and np.array_equal(data[1], source[2][1:3, 1:2])
    assert meta["name"] == [f"{IMAGE['name']}: membrane"]
    assert meta["colormap"][0].colors[-1].tolist() == [int(membrane["color"][i:i + 2], 16) / 255
                                                       for i in (0, 2, 4)] + [1.0]
    assert meta["contrast_limits"] == [[membrane["window"]["start"], membrane["window"]["end"]]]
    assert meta["scale"] == [1.0, *IMAGE["pixel_size_um"]]  # t, z, y, x: the channel axis is split off
    # the cache is private and the copy is marked complete
    cache = staging.cache_root()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    manifest = json.loads((path.parent / ".staged.json").read_text())
    assert manifest["complete"] and manifest["resolved"]["channel_names"] == ["membrane"]
    assert staging.status(path)["state"] == "complete"


def test_second_stage_of_the_same_selection_is_instant_and_makes_no_request(irods, scratch):
    first = staging.stage(irods.image_url, **SELECTION, **irods.credentials)
    before = irods.status()["requests"]
    started = time.monotonic()
    second = staging.stage(irods.image_url, **SELECTION, **irods.credentials)
    elapsed = time.monotonic() - started
    assert second == first
    assert irods.status()["requests"] == before
    assert elapsed < 0.1
    # another selection is another entry
    other = staging.stage(irods.image_url, levels=["s2"], **irods.credentials)
    assert other != first and other.parent != first.parent


def test_stage_over_http_and_from_local_disk_gives_the_same_selection(nginx, site, scratch):
    source = source_levels(site)
    for url in (f"{nginx.url}/{IMAGE_DIR}/", f"file://{site}/{IMAGE_DIR}"):
        path = staging.stage(url, levels=[1], channels=[0], timepoints=range(0, 2))
        metadata, levels = read_with_ome_zarr(path)
        assert len(levels) == 1 and np.array_equal(levels[0], source[1][0:2, 0:1]), url
        assert metadata["channel_names"] == ["nuclei"]


def test_things_that_are_not_images_are_staged_whole(nginx, irods, site, scratch):
    folder = staging.stage(f"file://{site}/plain")
    assert (folder / "sub" / "table.csv").read_bytes() == (site / "plain" / "sub" / "table.csv").read_bytes()
    over_http = staging.stage(f"{nginx.url}/plain/")
    assert staged_files(over_http) == {"notes.txt", "sub/table.csv"}
    one = staging.stage(f"irods://{ZONE}/home/alice/plain/notes.txt", **irods.credentials)
    assert one.is_file() and one.read_text() == "run 3\n"
    with pytest.raises(staging.SelectionError, match="not an OME-Zarr image"):
        staging.stage(f"file://{site}/plain", channels=[0])


def test_bad_selections_are_refused_with_the_reason(irods, scratch):
    with pytest.raises(staging.SelectionError, match="no channel named 'GFP'.*nuclei"):
        staging.stage(irods.image_url, channels=["GFP"], **irods.credentials)
    with pytest.raises(staging.SelectionError, match="level 7"):
        staging.stage(irods.image_url, levels=[7], **irods.credentials)
    with pytest.raises(staging.SelectionError, match="timepoint range 2:9"):
        staging.stage(irods.image_url, timepoints="2:9", **irods.credentials)
    assert not staging.cache_root().exists() or staging.status() == []


def _stage_in_subprocess(standin, scratch: Path, threads: int) -> subprocess.Popen:
    code = ("import sys, json; from bioimage_gateway import staging; "
            f"print(staging.stage({standin.image_url!r}, threads={threads}, "
            f"**json.loads(sys.argv[1])), flush=True)")
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(standin.credentials)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def _journal(entry: Path) -> list[str]:
    return journal_keys(entry / ".journal.jsonl")


def test_a_killed_stage_resumes_without_fetching_verified_objects_again(slow_irods, site, scratch):
    entry = staging.cache_root() / staging.cache_key(slow_irods.image_url, {})
    process = _stage_in_subprocess(slow_irods, scratch, threads=2)
    try:
        deadline = time.monotonic() + 60
        while len(_journal(entry)) < 20:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    verified = set(_journal(entry))
    assert not (entry / ".staged.json").exists()
    assert staging.status(slow_irods.image_url)["state"] == "interrupted"

    catalog = staging.api._open_source_catalog(slow_irods.image_url, slow_irods.credentials, 4)
    the_plan = staging.plan(catalog, slow_irods.image_url)
    before = opens(slow_irods)
    staging.plan(catalog, slow_irods.image_url)
    planning = opens(slow_irods) - before
    catalog.close()

    before = opens(slow_irods)
    path = staging.stage(slow_irods.image_url, **slow_irods.credentials)
    fetched = opens(slow_irods) - before - planning

    keys = _journal(entry)
    assert len(keys) == len(set(keys)), "an object was fetched and verified twice"
    assert set(keys) == {i.key for i in the_plan.items}
    assert fetched == len(the_plan.items) - len(verified)
    # the final tree is the source's, file for file and byte for byte
    source = site / IMAGE_DIR
    assert staged_files(path) == staged_files(source)
    for name in staged_files(source):
        if not name.endswith((".zattrs", ".zarray", ".zgroup")):
            assert (path / name).read_bytes() == (source / name).read_bytes(), name


def test_a_corrupted_source_object_is_detected_and_the_copy_not_marked_complete(site, scratch):
    from staging_support import seeded, stop_standin

    standin = seeded(site)
    try:
        catalogue = standin.catalogue()
        victim = f"{standin.image_path}/s1/0/0/0/0/0"
        row = catalogue.data_object(victim)
        vault = Path(row[9])
        data = bytearray(vault.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, other bytes; the catalogue keeps the old checksum
        vault.write_bytes(bytes(data))
        catalogue.close()

        with pytest.raises(staging.VerificationFailed) as caught:
            staging.stage(standin.image_url, retries=2, backoff=0.01, **standin.credentials)
        message = str(caught.value)
        assert "checksum mismatch" in message and "s1/0/0/0/0/0" in message and "not complete" in message
        entry = staging.cache_root() / staging.cache_key(standin.image_url, {})
        assert not (entry / ".staged.json").exists()
        assert not (entry / IMAGE_DIR / "s1/0/0/0/0/0").exists()  # never written under its name
        state = staging.status(standin.image_url)
        assert state["state"] == "failed" and "checksum mismatch" in state["error"]
        # the rest was verified and is kept: a selection without the bad object completes from it
        assert len(_journal(entry)) > 100
    finally:
        stop_standin(standin)


def test_the_quota_is_checked_before_anything_is_written_and_evicts_least_recently_used(irods, scratch):
    kept = staging.stage(irods.image_url, levels=["s2"], **irods.credentials)
    kept_bytes = json.loads((kept.parent / ".staged.json").read_text())["bytes"]
    entries_before = sorted(p.name for p in staging.cache_root().iterdir())

    with pytest.raises(staging.InsufficientSpace, match=r"needs \d+ bytes, more than the whole staging cache "
                                                        r"quota of 20000 bytes"):
        staging.stage(irods.image_url, levels=[0], quota=20_000, **irods.credentials)
    assert sorted(p.name for p in staging.cache_root().iterdir()) == entries_before

    # the entry already there is intact and still instant
    before = irods.status()["requests"]
    assert staging.stage(irods.image_url, levels=["s2"], **irods.credentials) == kept
    assert irods.status()["requests"] == before

    # a quota that fits the new selection but not both: the least recently used entry goes
    catalog = staging.api._open_source_catalog(irods.image_url, irods.credentials, 4)
    needed = staging.plan(catalog, irods.image_url, staging.normalise_selection(levels=[1])).total_bytes
    catalog.close()
    level1 = staging.stage(irods.image_url, levels=[1], quota=needed + kept_bytes - 1, **irods.credentials)
    assert level1.exists() and not kept.exists()
    assert [s["path"] for s in staging.status()] == [str(level1)]


def test_a_selection_that_does_not_fit_on_the_file_system_is_refused_before_anything_is_written(
        irods, small_scratch):
    disk = small_scratch("256k")
    kept = staging.stage(irods.image_url, levels=["s2"], **irods.credentials)
    before = disk.listing()
    free = disk.free()

    # level 1's data (about 54 kB) would fit in the bytes left; its 48 chunk files do not, in whole blocks
    with pytest.raises(staging.InsufficientSpace) as caught:
        staging.stage(irods.image_url, levels=[1], **irods.credentials)
    message = str(caught.value)
    assert caught.value.available == free and caught.value.needed > free
    assert f"needs {caught.value.needed} bytes on disk (48 objects" in message
    assert f"has only {free} bytes free" in message and "select less" in message
    assert disk.listing() == before  # nothing written, not even an empty entry

    # the cache is as it was: the entry there is complete and still instant
    requests = irods.status()["requests"]
    assert staging.stage(irods.image_url, levels=["s2"], **irods.credentials) == kept
    assert irods.status()["requests"] == requests
    assert [s["state"] for s in staging.status()] == ["complete"]


def test_a_disk_filling_up_mid_transfer_leaves_no_complete_looking_copy_and_resumes(slow_irods, site,
                                                                                    small_scratch):
    disk = small_scratch("1m")
    url = slow_irods.image_url
    entry = staging.cache_root() / staging.cache_key(url, {"levels": [0]})
    code = ("import sys, json\nfrom bioimage_gateway import staging\ntry:\n"
            f"    print(staging.stage({url!r}, levels=[0], threads=2, **json.loads(sys.argv[1])))\n"
            "except staging.StagingError as exc:\n    sys.exit(f'StagingError: {exc}')")
    process = subprocess.Popen([sys.executable, "-c", code, json.dumps(slow_irods.credentials)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(_journal(entry)) < 10:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
        disk.fill()  # another job takes every byte left
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1 and out == "", (out, err)
    assert err.startswith("StagingError: the disk is full"), err

    # not complete, and nothing that looks complete: no manifest, no metadata, no partial file
    data = entry / IMAGE_DIR
    assert not (entry / ".staged.json").exists() and not (data / ".zattrs").exists()
    state = staging.status(url)
    assert state["state"] == "failed" and "the disk is full" in state["error"], state
    assert not [p for p in entry.rglob("*") if ".part-" in p.name or ".tmp-" in p.name]
    # every chunk at its final name is the source's, byte for byte
    present = staged_files(data)
    assert present and len(present) < 108
    for name in present:
        assert (data / name).read_bytes() == (site / IMAGE_DIR / name).read_bytes(), name
    with pytest.raises(staging.InsufficientSpace):  # still full: refused before writing
        staging.stage(url, levels=[0], **slow_irods.credentials)

    disk.release()
    path = staging.stage(url, levels=[0], threads=4, **slow_irods.credentials)
    assert path == data and staging.status(url)["state"] == "complete"
    keys = _journal(entry)
    assert len(keys) == len(set(keys)) == 108
    for name in staged_files(site / IMAGE_DIR):
        if name.startswith("s0/") and not name.endswith((".zarray", ".zattrs")):
            assert (data / name).read_bytes() == (site / IMAGE_DIR / name).read_bytes(), name


def test_two_concurrent_stages_of_the_same_dataset_make_one_transfer(slow_irods, scratch):
    url = slow_irods.image_url
    entry = staging.cache_root() / staging.cache_key(url, {"levels": [1]})
    before = opens(slow_irods)
    code = ("import sys, json; from bioimage_gateway import staging; "
            f"print(staging.stage({url!r}, levels=[1], **json.loads(sys.argv[1])), flush=True)")
    procs = [subprocess.Popen([sys.executable, "-c", code, json.dumps(slow_irods.credentials)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outputs.append(out.strip())
    assert outputs[0] == outputs[1] == str(entry / IMAGE_DIR)
    keys = _journal(entry)
    assert len(keys) == len(set(keys))  # each object verified once
    items = len(keys)
    total = opens(slow_irods) - before
    assert total < 2 * items, f"{total} objects opened for {items}: two transfers?"


def test_background_stage_survives_its_caller_and_reports_progress(slow_irods, scratch):
    url = slow_irods.image_url
    path = staging.stage(url, levels=[0], background=True, threads=2, **slow_irods.credentials)
    assert not (path.parent / ".staged.json").exists()
    seen_states, seen_activity = set(), False
    deadline = time.monotonic() + 90
    while True:
        doc = staging.status(path)
        seen_states.add(doc["state"])
        active = scratch / "active"
        seen_activity |= active.exists() and any(active.iterdir())
        if doc["state"] == "complete":
            break
        assert doc["state"] in ("queued", "running"), doc
        assert time.monotonic() < deadline
        if doc["state"] == "running":
            assert doc["objects_total"] > 0 and doc["bytes_total"] > 0 and "eta_s" in doc
        time.sleep(0.1)
    assert "running" in seen_states and seen_activity
    assert staging.wait(path, timeout=5) == path
    assert not (path.parent / ".job.json").exists()  # it held the password
    _, levels = read_with_ome_zarr(path)
    assert len(levels) == 1
    cli = subprocess.run([sys.executable, "-m", "bioimage_gateway.cli", "stage", "--status"],
                         capture_output=True, text=True, check=True)
    assert "complete" in cli.stdout and url in cli.stdout
    # the runner ends by itself once done (and leaves nothing running behind the test)
    runner = staging.status(path)["pid"]
    deadline = time.monotonic() + 30
    while _runs_staging(runner):
        assert time.monotonic() < deadline, f"the background runner {runner} is still running"
        time.sleep(0.05)


def _runs_staging(pid: int) -> bool:
    try:  # a zombie (exited, not yet reaped) has an empty command line
        return b"bioimage_gateway.staging" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_publish_round_trip_with_provenance_and_no_overwrite(irods, site, scratch, tmp_path):
    from irods.models import Collection, CollectionMeta
    from irods.session import iRODSSession

    staged = staging.stage(irods.image_url, **SELECTION, **irods.credentials)
    target = f"irods://{ZONE}/home/alice/results/{IMAGE_DIR}"
    assert staging.publish(staged, target, **irods.credentials) == target

    with iRODSSession(**irods.credentials) as session:
        coll = f"/{ZONE}/home/alice/results/{IMAGE_DIR}"
        avus = {row[CollectionMeta.name]: row[CollectionMeta.value] for row in
                session.query(CollectionMeta.name, CollectionMeta.value).filter(Collection.name == coll)}
        assert avus["prov:wasDerivedFrom"] == irods.image_url
        assert avus["rembi:analysed_data.derived_from"] == irods.image_url
        assert json.loads(avus["prov:selection"])["channel_names"] == ["membrane"]
        assert avus["prov:publishedBy"].startswith("alice")
        assert "bioimage-gateway" in avus["prov:software"] or "python-irodsclient" in avus["prov:software"]
        assert avus["rembi:analysed_data.type"] == "OME-Zarr image"
        chunk = session.data_objects.get(f"{coll}/s0/1/0/0/0/0")
        assert chunk.checksum  # registered by the verification

    back = staging.stage(target, dest=tmp_path / "back", **irods.credentials)
    _, levels = read_with_ome_zarr(back)
    _, original = read_with_ome_zarr(staged)
    assert all(np.array_equal(a, b) for a, b in zip(levels, original))

    with pytest.raises(staging.AlreadyExists, match=f"{target} exists already"):
        staging.publish(staged, target, **irods.credentials)
    note = tmp_path / "note.txt"
    note.write_text("v2")
    staging.publish(note, f"irods://{ZONE}/home/alice/results/note.txt", **irods.credentials)
    note.write_text("version 3")
    with pytest.raises(staging.AlreadyExists, match="note.txt exists already"):
        staging.publish(note, f"irods://{ZONE}/home/alice/results/note.txt", **irods.credentials)
    staging.publish(note, f"irods://{ZONE}/home/alice/results/note.txt", overwrite=True, **irods.credentials)
    again = staging.stage(f"irods://{ZONE}/home/alice/results/note.txt", dest=tmp_path / "n",
                          **irods.credentials)
    assert again.read_text() == "version 3"


def test_evict_removes_every_selection_of_a_url(irods, scratch):
    a = staging.stage(irods.image_url, levels=[2], **irods.credentials)
    b = staging.stage(irods.image_url, levels=[1], **irods.credentials)
    removed = staging.evict(irods.image_url)
    assert sorted(removed) == sorted([a.parent, b.parent]) and not a.exists() and not b.exists()
    with pytest.raises(staging.StagingError, match="nothing staged"):
        staging.evict(irods.image_url)
