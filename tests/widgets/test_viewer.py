"""The in-notebook viewer: the right resolution level, only the chunks in view."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from bioimage_gateway.catalogs.posix import PosixCatalog
from bioimage_gateway.devstack.samples import write_sample_image
from bioimage_gateway.widgets.data_browser import composite_rgb
from bioimage_gateway.widgets.viewer import Viewer, ViewerModel


class CountingPosixCatalog(PosixCatalog):
    """The real POSIX catalog, remembering which objects it opened."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.opened: list[str] = []

    def open(self, path):
        self.opened.append(str(path))
        return super().open(path)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    # 256 x 256, 2 channels, 3 timepoints, chunks of 64: levels 256, 128, 64 pixels across.
    path = write_sample_image(tmp_path_factory.mktemp("viewer") / "cells.ome.zarr",
                              name="cells", shape_tczyx=(3, 2, 1, 256, 256), levels=3,
                              channel_names=["nuclei", "tubulin"], chunks=(1, 1, 1, 64, 64))
    return path


def model_for(image, size=64) -> ViewerModel:
    catalog = CountingPosixCatalog(image.parent)
    return ViewerModel(catalog, PosixCatalog.url(str(image)), size=size)


def chunk_files(opened: list[str], level: str) -> set[tuple[int, ...]]:
    out = set()
    for url in opened:
        parts = url.split(".ome.zarr/", 1)[1].split("/")
        if parts[0] == level and not parts[-1].startswith("."):
            out.add(tuple(int(p) for p in (parts[1:] if len(parts) > 2 else parts[1].split("."))))
    return out


def test_first_view_reads_the_coarsest_level_that_fills_it(image):
    model = model_for(image, size=64)
    model.catalog.opened.clear()
    rgb = model.render()
    assert model.last_level == 2 and rgb.shape == (64, 64, 3)
    # The whole 64 x 64 lowest level is one chunk per channel: two chunk reads.
    levels = [level.path for level in model.description.levels]
    assert len(chunk_files(model.catalog.opened, levels[2])) == 2
    assert chunk_files(model.catalog.opened, levels[0]) == set()


def test_zoomed_view_reads_only_the_chunks_under_it_at_full_resolution(image):
    model = model_for(image, size=64)
    model.zoom(4, cy=0.125, cx=0.125)  # a 64 x 64 region in the top-left corner
    assert (model.region.y, model.region.x, model.region.height) == (0, 0, 64)
    model.catalog.opened.clear()
    rgb = model.render()
    assert model.last_level == 0
    read = chunk_files(model.catalog.opened, model.description.levels[0].path)
    # One chunk (t=0, z, y=0, x=0) per channel, and nothing else of level 0.
    assert {(c[0], c[1], c[3], c[4]) for c in read} == {(0, 0, 0, 0), (0, 1, 0, 0)}
    # The pixels are the source's, composited in the channels' colours.
    level0 = model.description.levels[0].path
    source = zarr.open_group(str(image), mode="r")[level0][0, :, model.z, 0:64, 0:64]
    assert np.array_equal(rgb, composite_rgb(np.asarray(source, dtype=np.float64),
                                             model.description.channels, model.active))


def test_time_and_channels_change_the_image(image):
    model = model_for(image, size=64)
    first = model.render()
    model.t = 2
    assert not np.array_equal(model.render(), first)
    model.toggle(1)  # tubulin off: nuclei alone
    assert model.active == {0}
    alone = model.render()
    model.toggle(1)
    assert not np.array_equal(alone, model.render())


def test_widget_buttons_drive_the_model(image):
    catalog = CountingPosixCatalog(image.parent)
    viewer = Viewer(PosixCatalog.url(str(image)), catalog=catalog, size=64)
    assert bytes(viewer.image.value).startswith(b"\x89PNG")
    assert viewer.status.value.startswith("level 2")
    viewer.buttons["+"].click()
    viewer.buttons["+"].click()
    assert viewer.status.value.startswith("level 0")
    viewer.t_slider.value = 1
    assert viewer.model.t == 1
    viewer.buttons["reset"].click()
    assert viewer.status.value.startswith("level 2")
