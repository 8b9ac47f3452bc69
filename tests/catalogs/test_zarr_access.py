"""One OME-Zarr image read in place through the catalogs, with zarr and dask, from the iRODS
stand-in (IrodsCatalog over TCP), from nginx (HttpCatalog) and from the file system
(PosixCatalog): the same pixels as written, level shapes, channel names, images recognised in
listings, and the errors for what is not there, not an image or not yours."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from irods_support import USERS, ZONE
from zarr_support import IMAGE, IMAGE_DIR

from bioimage_gateway.catalogs import (HttpCatalog, InvalidPath, IrodsCatalog, NotFound, PermissionDenied,
                                       PosixCatalog, open_catalog)
from bioimage_gateway.catalogs.zarr import (CatalogStore, browse, classify, describe_image, is_ome_zarr,
                                            open_image, read_pyramid)
from bioimage_gateway.devstack.samples import sample_data, write_sample_image

LEVEL_SHAPES = [(2, 2, 5, 70, 90), (2, 2, 5, 35, 45), (2, 2, 5, 17, 22)]


@pytest.fixture
def alice_irods(irods_images):
    catalog = IrodsCatalog(irods_images.host, irods_images.port, "alice", ZONE, USERS["alice"])
    yield catalog
    catalog.close()


@pytest.fixture(params=["irods", "http", "posix"])
def image_at(request, site):
    """(catalog, image URL) for each place the image is read from."""
    if request.param == "irods":
        catalog = request.getfixturevalue("alice_irods")
        return catalog, request.getfixturevalue("irods_images").image
    if request.param == "http":
        catalog = HttpCatalog()
        request.addfinalizer(catalog.close)
        return catalog, f"{request.getfixturevalue('nginx').url}/images/{IMAGE_DIR}/"
    return PosixCatalog(), PosixCatalog.url(str(site / "images" / IMAGE_DIR))


@pytest.fixture(scope="module")
def reference(site):
    """The levels as written, read locally with zarr's own store."""
    group = zarr.open_group(str(site / "images" / IMAGE_DIR), mode="r")
    return [group[f"s{i}"][:] for i in range(3)]


# --- reading pixels in place ----------------------------------------------------------------------

def test_zarr_reads_every_level_through_the_catalog(image_at, reference):
    catalog, url = image_at
    group = zarr.open_group(store=CatalogStore(catalog, url), mode="r")
    assert sorted(group.array_keys()) == ["s0", "s1", "s2"]
    assert group.attrs["multiscales"][0]["name"] == IMAGE["name"]
    for i, expected in enumerate(reference):
        got = group[f"s{i}"][:]
        assert got.shape == LEVEL_SHAPES[i] and got.dtype == np.uint16
        np.testing.assert_array_equal(got, expected)
    # the full-resolution level is exactly the generator's content
    np.testing.assert_array_equal(group["s0"][:], sample_data(IMAGE["shape_tczyx"], seed=IMAGE["seed"]))


def test_dask_reads_regions_lazily(image_at, reference):
    catalog, url = image_at
    levels = read_pyramid(catalog, url)
    assert [lvl.shape for lvl in levels] == LEVEL_SHAPES
    assert isinstance(levels[0], da.Array)
    region = levels[0][1, 0, 2:4, 20:60, 30:90].compute(scheduler="threads", num_workers=2)
    np.testing.assert_array_equal(region, reference[0][1, 0, 2:4, 20:60, 30:90])
    assert float(levels[2].mean().compute(scheduler="synchronous")) == pytest.approx(reference[2].mean())


def test_describe_image_gives_levels_axes_channels(image_at):
    catalog, url = image_at
    d = describe_image(catalog, url)
    assert (d.version, d.zarr_format, d.name, d.axis_names) == ("0.4", 2, IMAGE["name"], "tczyx")
    assert [lvl.shape for lvl in d.levels] == LEVEL_SHAPES
    assert [lvl.path for lvl in d.levels] == ["s0", "s1", "s2"]
    assert all(lvl.chunks == (1, 1, 2, 32, 32) and lvl.dtype == "uint16" for lvl in d.levels)
    assert d.levels[0].scale == (1.0, 1.0, 2.0, 0.5, 0.5)
    assert d.levels[2].scale[-1] == pytest.approx(0.5 * 90 / 22)  # pixel size grows with each level
    assert d.levels[0].chunk_count == 2 * 2 * 3 * 3 * 3 and d.levels[0].nbytes == 2 * 2 * 5 * 70 * 90 * 2
    assert [c.name for c in d.channels] == ["nuclei", "membrane"]
    assert [c.color for c in d.channels] == ["#00FF00", "#FF00FF"]
    assert all(0 <= c.window["start"] < c.window["end"] <= 65535 for c in d.channels)
    assert d.sizes == {"t": 2, "c": 2, "z": 5, "y": 70, "x": 90}
    assert [a["type"] for a in d.axes] == ["time", "channel", "space", "space", "space"]


def test_reading_a_region_over_http_fetches_only_its_chunks(nginx):
    with HttpCatalog() as web:
        url = f"{nginx.url}/images/{IMAGE_DIR}/"
        level0 = open_image(web, url)["s0"]
        before = nginx.requests_logged()
        level0[1, 0, 2, 0:32, 0:32]  # one chunk: t=1, c=0, z=2..3, y=0..31, x=0..31
        fetched = [line.split('"')[1] for line in nginx.log()[before:]]
        assert fetched == [f"GET /images/{IMAGE_DIR}/s0/1/0/1/0/0 HTTP/1.1"]


# --- images in listings, metadata and search ---------------------------------------------------

def test_irods_listings_mark_the_image_through_classify(alice_irods, irods_images):
    images = irods_images.image.rsplit("/", 1)[0]
    raw = {e.name: e.kind for e in alice_irods.list(images)}
    assert raw == {IMAGE_DIR: "collection", "plain": "collection"}  # iRODS itself knows no images
    assert {e.name: e.kind for e in browse(alice_irods, images)} == {IMAGE_DIR: "image", "plain": "collection"}
    assert is_ome_zarr(alice_irods, irods_images.image)
    assert not is_ome_zarr(alice_irods, f"{images}/plain")


def test_rembi_avus_on_the_image_are_searchable(alice_irods, irods_images):
    meta = alice_irods.metadata(irods_images.image)
    assert meta["rembi:biosample.organism"] == [("Mus musculus", "")]
    assert meta["rembi:image_data.pixel_size_xy"] == [("0.5", "um")]
    found = [classify(alice_irods, e) for e in alice_irods.search(
        {"rembi:biosample.organism": "Mus musculus", "rembi:image_acquisition.modality": "light-sheet"})]
    assert [(e.url, e.kind) for e in found] == [(irods_images.image, "image")]


def test_an_ome_zarr_0_5_image_is_recognised_and_read(tmp_path):
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image
    data = sample_data((1, 2, 3, 40, 50), seed=3)
    window = {"start": 0, "end": 3000, "min": 0, "max": 65535}
    group = zarr.open_group(str(tmp_path / "v05.ome.zarr"), mode="w", zarr_format=3)
    write_image(data, group, scale_factors=[2], fmt=FormatV05(), axes="tczyx",
                storage_options={"chunks": (1, 1, 3, 20, 20)},
                omero={"channels": [{"label": label, "color": color, "window": window} for label, color in
                                    (("a", "FF0000"), ("b", "0000FF"))]})
    posix = PosixCatalog()
    url = posix.url(str(tmp_path / "v05.ome.zarr"))
    assert is_ome_zarr(posix, url)
    [entry] = posix.list(posix.url(str(tmp_path)))
    assert entry.kind == "image"
    d = describe_image(posix, url)
    assert (d.version, d.zarr_format) == ("0.5", 3)
    assert [lvl.shape for lvl in d.levels] == [(1, 2, 3, 40, 50), (1, 2, 3, 20, 25)]
    assert d.levels[0].chunks == (1, 1, 3, 20, 20)
    assert [(c.name, c.color) for c in d.channels] == [("a", "#FF0000"), ("b", "#0000FF")]
    np.testing.assert_array_equal(open_image(posix, url)[d.levels[0].path][:], data)


def test_samples_written_by_the_devstack_are_read_the_same_way(tmp_path):
    path = write_sample_image(tmp_path / "tiny.ome.zarr", name="tiny", shape_tczyx=(1, 1, 1, 20, 30),
                              levels=2, channel_names=["DAPI"], seed=4, dtype="uint8")
    levels = read_pyramid(PosixCatalog(), str(path))
    assert [lvl.shape for lvl in levels] == [(1, 1, 1, 20, 30), (1, 1, 1, 10, 15)]
    np.testing.assert_array_equal(levels[0].compute(), sample_data((1, 1, 1, 20, 30), seed=4, dtype="uint8"))


# --- what is not there, not an image, or not yours --------------------------------------------

def test_missing_or_non_image_addresses_say_so(alice_irods, irods_images, nginx, site):
    images = irods_images.image.rsplit("/", 1)[0]
    for catalog, missing, plain in (
            (alice_irods, f"{images}/nope.ome.zarr", f"{images}/plain"),
            (HttpCatalog(), f"{nginx.url}/images/nope.ome.zarr/", f"{nginx.url}/study1/"),
            (PosixCatalog(), f"{site}/images/nope.ome.zarr", f"{site}/study1")):
        with pytest.raises(NotFound):
            describe_image(catalog, missing)
        with pytest.raises(InvalidPath, match="is not an OME-Zarr image"):
            describe_image(catalog, plain)
        with pytest.raises(FileNotFoundError):  # zarr's own error for "no group here"
            zarr.open_group(store=CatalogStore(catalog, missing), mode="r")
        assert not is_ome_zarr(catalog, missing)


def test_another_users_image_is_permission_denied(alice_irods, irods_images):
    for call in (describe_image, is_ome_zarr, open_image):
        with pytest.raises(PermissionDenied, match="permission denied"):
            call(alice_irods, irods_images.private)
    entry = alice_irods.stat(irods_images.image)
    assert classify(alice_irods, entry).kind == "image"


def test_the_store_is_read_only_and_refuses_dot_dot(image_at):
    catalog, url = image_at
    store = CatalogStore(catalog, url)
    assert store.read_only and not store.supports_writes
    with pytest.raises(ValueError, match="Store is read-only"):
        zarr.open_group(store=store, mode="a")
    level0 = zarr.open_group(store=store, mode="r")["s0"]
    with pytest.raises(PermissionError, match="is read-only"):
        level0[0, 0, 0, 0, 0] = 1
    with pytest.raises(InvalidPath, match=r"'\.\.'"):
        store.key_url("../../etc/passwd")
    with pytest.raises(ValueError, match="read-only"):
        CatalogStore(catalog, url, read_only=False)


def test_open_catalog_dispatches_irods_addresses(irods_images):
    with open_catalog(irods_images.image, host=irods_images.host, port=irods_images.port,
                      user="alice", password=USERS["alice"]) as catalog:
        assert isinstance(catalog, IrodsCatalog) and catalog.zone == ZONE
        assert describe_image(catalog, irods_images.image).sizes["x"] == 90


def test_open_catalog_dispatches_omero_addresses(omero):
    from omero_support import OMERO_USERS

    from bioimage_gateway.catalogs.omero import OmeroCatalog
    root = f"omero://{omero.host}:{omero.port}/"
    with open_catalog(root, url=omero.url, username="alice", password=OMERO_USERS["alice"]) as catalog:
        assert isinstance(catalog, OmeroCatalog)
        assert all(e.url.startswith(root) for e in catalog.list(root))
        assert list(catalog.list(root))
