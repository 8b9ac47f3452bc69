"""The stager, in-process: clicks choose what to stage and start a real background transfer
(from a PosixCatalog over a sample image) whose progress the widget reads back."""

from __future__ import annotations

import time

import pytest

from bioimage_gateway.catalogs.posix import PosixCatalog
from bioimage_gateway.devstack.samples import write_sample_image
from bioimage_gateway.staging import status, wait
from bioimage_gateway.widgets import Stager
from bioimage_gateway.widgets.stager import progress_text

SHAPE = (4, 2, 2, 64, 64)  # t c z y x, uint16: level 0 is 128 KiB


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "cells.ome.zarr"
    write_sample_image(path, name="cells", shape_tczyx=SHAPE, levels=3,
                       channel_names=("nuclei", "membrane"), chunks=(1, 1, 1, 32, 32), seed=7)
    return PosixCatalog.url(str(path))


def test_each_choice_shows_its_cost_and_the_snippet(image, tmp_path):
    s = Stager(PosixCatalog(), image, cache_dir=tmp_path, refresh_interval=None)
    # default: the smallest level, every channel, every timepoint
    assert [b.value for b in s.level_boxes] == [False, False, True]
    assert s.level_costs[0].value == "4 x 2 x 2 x 64 x 64 uint16: 128.0 KiB"
    assert s.level_costs[2].value == "4 x 2 x 2 x 16 x 16 uint16: 8.0 KiB"
    assert "8.0 KiB" in s.total.value
    assert s.snippet.value == f"stage({image!r}, levels=[2], background=True)"
    s.level_boxes[0].value = True
    s.channel_boxes[1].value = False      # half the channels
    s.timepoints.value = (1, 2)           # half the timepoints
    assert s.level_costs[0].value.endswith(": 32.0 KiB")
    assert "Total: <b>34.0 KiB</b>" == s.total.value
    assert s.snippet.value == (f"stage({image!r}, levels=[0, 2], channels=['nuclei'], "
                               f"timepoints=range(1, 3), background=True)")
    assert s.channel_cost.value == "(34.0 KiB each)"  # 136 KiB for half the timepoints, 2 channels
    assert s.timepoint_cost.value == "17.0 KiB per timepoint"
    for box in s.level_boxes:
        box.value = False
    s.start_button.click()
    assert "at least one resolution level" in s.error.value and s.model.path is None


def test_stage_runs_in_the_background_and_reports_progress(image, tmp_path):
    s = Stager(PosixCatalog(), image, cache_dir=tmp_path, refresh_interval=None)
    s.channel_boxes[1].value = False
    s.start_button.click()
    assert s.error.value == "" and s.model.path is not None
    assert s.start_button.disabled and not s.cancel_button.disabled
    path = wait(s.model.path, timeout=60, cache_dir=tmp_path)
    assert s.refresh() == "complete"
    assert s.progress.value == 1 and s.cancel_button.disabled
    assert s.status.value.startswith("complete: ") and str(path) in s.status.value
    assert (path / ".zattrs").exists()
    doc = status(image, cache_dir=tmp_path)
    assert doc["selection"] == {"levels": [2], "channels": ["nuclei"]}


def test_progress_text():
    assert progress_text(None) == "not started"
    assert progress_text({"state": "running", "bytes_done": 512, "bytes_total": 2048,
                          "rate_bytes_per_s": 1024, "eta_s": 1.6}) == \
        "running: 512 B of 2.0 KiB (25%), 1.0 KiB/s, ETA 2 s"


@pytest.fixture(scope="module")
def slow_irods(tmp_path_factory):
    """An iRODS stand-in answering every request 25 ms late, seeded with a sample image (the
    staging tests' helpers), so that a transfer lasts long enough to be cancelled."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent.parent / "staging"))
    from staging_support import IMAGE, IMAGE_DIR, seeded, stop_standin

    site = tmp_path_factory.mktemp("site")
    write_sample_image(site / IMAGE_DIR, **IMAGE)
    (site / "plain").mkdir()
    (site / "plain" / "notes.txt").write_text("run 3\n")
    standin = seeded(site, latency_ms=25)
    try:
        yield standin
    finally:
        stop_standin(standin)


def test_cancel_stops_the_transfer_and_staging_again_resumes(slow_irods, tmp_path):
    from bioimage_gateway.catalogs import open_catalog

    catalog = open_catalog(slow_irods.image_url, **slow_irods.credentials)
    s = Stager(catalog, slow_irods.image_url, cache_dir=tmp_path, credentials=slow_irods.credentials,
               options={"threads": 1}, refresh_interval=None)
    s.level_boxes[0].value = True  # every level: about 200 objects, 25 ms each
    s.start_button.click()
    deadline = time.monotonic() + 60
    while True:
        doc = s.model.status()
        if doc and doc.get("state") == "running" and doc.get("bytes_done"):
            break
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)
    s.cancel_button.click()
    doc = s.model.status()
    assert doc["state"] == "interrupted", doc
    assert 0 < doc["bytes_done"] < doc["bytes_total"]
    assert s.status.value.startswith("interrupted: ") and not s.start_button.disabled
    assert s.cancel_button.disabled
    s.start_button.click()  # resumes
    assert s.model.status()["state"] in ("queued", "running")  # not the killed run's record
    deadline = time.monotonic() + 120
    while s.refresh() != "complete":
        assert time.monotonic() < deadline and s.model.status()["state"] in ("queued", "running")
        time.sleep(0.1)
    assert (s.model.path / ".zattrs").exists() and s.progress.value == 1
    catalog.close()
