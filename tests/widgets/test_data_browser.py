"""The data browser, in-process: clicks drive the model, the model drives real catalogs (the
devstack's seeded iRODS stand-in, a PosixCatalog over a temporary directory)."""

from __future__ import annotations

import io
import itertools
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from bioimage_gateway.catalogs import Catalog, Entry, open_catalog
from bioimage_gateway.catalogs.posix import PosixCatalog
from bioimage_gateway.devstack.samples import write_sample_image
from bioimage_gateway.widgets import DataBrowser
from bioimage_gateway.widgets.data_browser import BrowserModel, Root, png_bytes

HOSTILE = "<img src=x onerror=alert(1)>"


def decode_png(data: bytes) -> np.ndarray:
    """A PNG's pixels, with Pillow when it is there, else by hand (8-bit, filter 0 rows only)."""
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        return np.asarray(Image.open(io.BytesIO(data)))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,), tag = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, _, colour, *_ = header
    channels = 3 if colour == 2 else 1
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * channels)
    assert (raw[:, 0] == 0).all()
    pixels = raw[:, 1:]
    return pixels.reshape(height, width, 3) if channels == 3 else pixels


# --- a local scratch directory ----------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("scratch")
    write_sample_image(root / "cells.ome.zarr", name="cells", shape_tczyx=(2, 2, 4, 64, 96),
                       levels=3, channel_names=("nuclei", "membrane"), chunks=(1, 1, 1, 32, 32),
                       seed=5, rembi={"rembi:biosample.organism": "Mus musculus",
                                      "rembi:image_data.pixel_size_xy": ("0.5", "um")})
    many = root / "many"
    many.mkdir()
    for i in range(450):
        (many / f"f{i:04d}.txt").write_text(str(i))
    (root / f"{HOSTILE}.txt").write_text("hello")
    return root


@pytest.fixture
def browser(scratch, tmp_path):
    roots = [Root("scratch", PosixCatalog(scratch), PosixCatalog.url(str(scratch)), var="scratch")]
    return DataBrowser(roots, staging_cache_dir=tmp_path / "cache")


def names(b: DataBrowser) -> list[str]:
    return [label.split(" ", 1)[1] for label, _ in b.listing.options]


def crumbs(b: DataBrowser) -> list[str]:
    return [button.description for button in b.crumb_bar.children]


def test_top_lists_the_catalogs_and_opening_one_lists_it(browser):
    assert names(browser) == ["scratch"]
    assert crumbs(browser) == ["Catalogs"]
    browser.open_entry(0)
    assert crumbs(browser) == ["Catalogs", "scratch"]
    # directories first, then files; the image is marked as one
    assert names(browser)[:2] == ["cells.ome.zarr", "many"]
    assert browser.listing.options[0][0].startswith("\U0001F5BC")
    assert browser.more_button.disabled
    assert browser.snippet.value.startswith("[e.name for e in scratch.list('file://")


def test_paging_and_breadcrumbs(browser):
    browser.open_entry(0)
    browser.open_entry(names(browser).index("many"))
    assert crumbs(browser) == ["Catalogs", "scratch", "many"]
    assert len(browser.listing.options) == 200 and not browser.more_button.disabled
    assert "200 entries (more to list)" in browser.count.value
    browser.more_button.click()
    assert len(browser.listing.options) == 400 and not browser.more_button.disabled
    browser.more_button.click()
    assert len(browser.listing.options) == 450 and browser.more_button.disabled
    assert names(browser)[-1] == "f0449.txt"
    browser.crumb_bar.children[1].click()  # back to "scratch"
    assert crumbs(browser) == ["Catalogs", "scratch"] and "many" in names(browser)
    browser.up_button.click()
    assert crumbs(browser) == ["Catalogs"] and names(browser) == ["scratch"]


class Endless(Catalog):
    """A catalog with an endless collection, counting how many entries were produced."""

    scheme = "endless"

    def __init__(self):
        self.produced = 0

    def list(self, path) -> Iterator[Entry]:
        for i in itertools.count():
            self.produced += 1
            yield Entry(f"endless:///{i}", f"object {i}", "object", 1)

    def stat(self, path):
        return Entry(path, path, "collection")

    def metadata(self, path):
        return {}

    def search(self, query, under=None):
        return iter(())

    def open(self, path):
        raise NotImplementedError

    def checksum(self, path):
        return "sha2:x"


def test_a_huge_collection_is_read_a_page_at_a_time():
    catalog = Endless()
    model = BrowserModel([Root("big", catalog, "endless:///")], page_size=200)
    model.open(0)
    assert len(model.entries) == 200 and model.has_more
    assert catalog.produced == 201  # one page, and one entry ahead to know there is more
    model.more()
    assert len(model.entries) == 400 and catalog.produced == 401


def test_image_details_rembi_thumbnail_and_snippets(browser, scratch):
    browser.open_entry(0)
    browser.select(names(browser).index("cells.ome.zarr"))
    details = browser.details.value
    assert "Mus musculus" in details and "Biosample" in details
    assert "0.5 um" in details  # pixel size with its units
    assert "not staged" in details
    assert "64 x 96" in details  # full-resolution plane, as a level row
    pixels = decode_png(browser.thumbnail.value)
    assert pixels.shape == (16, 24, 3)  # the lowest level (x and y halved twice)
    assert pixels.max() > 0
    url = PosixCatalog.url(str(scratch / "cells.ome.zarr"))
    snippets = browser.model.snippets()
    assert snippets["stage"] == f"stage({url!r}, levels=[2])"
    assert snippets["open"] == f"open_image(scratch, {url!r})"
    assert browser.snippet.value == f"to_rembi(scratch.metadata({url!r}))"
    assert f"stage({url!r}, levels=[2])".replace("'", "&#x27;") in browser.snippet_list.value


def test_stage_button_opens_a_stager_for_the_image(browser, scratch):
    browser.open_entry(0)
    assert browser.stage_button.disabled
    browser.select(names(browser).index("cells.ome.zarr"))
    assert not browser.stage_button.disabled
    browser.stage_button.click()
    (stager,) = browser.stage_area.children
    url = PosixCatalog.url(str(scratch / "cells.ome.zarr"))
    assert stager.model.url == url and [b.value for b in stager.level_boxes] == [False, False, True]
    assert browser.snippet.value == f"stage({url!r}, levels=[2], background=True)"
    browser.select(names(browser).index("many"))
    assert browser.stage_button.disabled and browser.stage_area.children == ()


def test_default_catalogs_are_those_the_session_has(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOIMAGE_GATEWAY_SCRATCH", str(tmp_path))
    monkeypatch.setenv("IRODS_ENVIRONMENT_FILE", str(tmp_path / "missing.json"))
    monkeypatch.delenv("BIOIMAGE_GATEWAY_OMERO_URL", raising=False)
    (tmp_path / "result.csv").write_text("a,b\n")
    b = DataBrowser()
    assert names(b) == ["scratch"]  # no iRODS environment, no OMERO: left out
    b.open_entry(0)
    assert names(b) == ["result.csv"]
    # a site with OMERO: listed before scratch, waiting for the user to sign in
    monkeypatch.setenv("BIOIMAGE_GATEWAY_OMERO_URL", "http://127.0.0.1:9/")
    monkeypatch.delenv("OMERO_PASSWORD", raising=False)
    b = DataBrowser()
    assert names(b) == ["OMERO", "scratch"]
    b.open_entry(0)
    assert b.sign_in_box.layout.display != "none" and crumbs(b) == ["Catalogs"]


def test_a_staged_image_says_where_it_is(browser, scratch, tmp_path):
    from bioimage_gateway.staging import stage
    url = PosixCatalog.url(str(scratch / "cells.ome.zarr"))
    path = stage(url, levels=[2], cache_dir=tmp_path / "cache")
    browser.open_entry(0)
    browser.select(names(browser).index("cells.ome.zarr"))
    assert f"complete at {path}" in browser.details.value


def test_search_by_metadata(browser, scratch):
    browser.open_entry(0)
    browser.search_box.value = "rembi:biosample.organism=Mus musculus"
    browser.search_button.click()
    assert names(browser) == ["cells.ome.zarr"]
    assert crumbs(browser)[-1] == "search: rembi:biosample.organism=Mus musculus"
    assert browser.snippet.value.startswith(
        "[e.url for e in scratch.search({'rembi:biosample.organism': 'Mus musculus'}, under='file://")
    browser.search_box.value = "no equals sign"
    browser.search_button.click()
    assert "key=value" in browser.error.value
    browser.clear_button.click()
    assert "many" in names(browser)


def test_a_hostile_file_name_is_shown_as_text(browser):
    browser.open_entry(0)
    labels = names(browser)
    assert f"{HOSTILE}.txt" in labels  # a Select's labels are plain text
    browser.select(labels.index(f"{HOSTILE}.txt"))
    shown = browser.details.value + browser.snippet_list.value + browser.error.value
    assert "<img" not in shown and "onerror=alert(1)>" not in shown
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in browser.details.value
    assert "sha2:" in browser.details.value  # computed for a small POSIX object
    for button in browser.crumb_bar.children:  # breadcrumbs are buttons: text only
        assert "<" not in button.description or button.description == HOSTILE


def test_a_hostile_directory_name_in_breadcrumbs_and_errors(tmp_path):
    root = tmp_path / "root"
    (root / HOSTILE).mkdir(parents=True)
    roots = [Root("scratch", PosixCatalog(root), PosixCatalog.url(str(root)), var="scratch")]
    b = DataBrowser(roots, staging_cache_dir=tmp_path / "cache")
    b.open_entry(0)
    b.open_entry(0)
    assert crumbs(b)[-1] == HOSTILE  # a Button's description is never HTML
    (root / HOSTILE).rmdir()
    b.more_button.click()
    b.crumb_bar.children[-1].click()  # re-listing fails: the error names the path, escaped
    assert "no such file or directory" in b.error.value
    assert "<img" not in b.error.value and names(b) == []


def test_png_writer_without_pillow():
    rgb = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    assert (decode_png(png_bytes(rgb)) == rgb).all()
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert (decode_png(png_bytes(grey)) == grey).all()


# --- the devstack's iRODS ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def irods(devstack):
    services = devstack.record()["data_services"]["irods"]
    catalog = open_catalog(f"irods://{services['zone']}/", host=services["host"], port=services["port"],
                           user="alice", zone=services["zone"], password="alice-demo")
    yield services["zone"], catalog
    catalog.close()


def test_irods_browse_details_and_thumbnail(irods, tmp_path):
    zone, catalog = irods
    home = f"irods://{zone}/home/alice"
    b = DataBrowser({"iRODS": Root("iRODS", catalog, home, var="irods")},
                    staging_cache_dir=tmp_path / "cache")
    b.open_entry(0)
    assert crumbs(b) == ["Catalogs", "iRODS"]
    assert {"lightsheet", "shared-with-imaging"} <= set(names(b))
    b.open_entry(names(b).index("lightsheet"))
    assert crumbs(b) == ["Catalogs", "iRODS", "lightsheet"]
    assert names(b) == ["mouse-embryo-lightsheet.ome.zarr"]
    assert b.listing.options[0][0].startswith("\U0001F5BC")  # recognised as an image
    b.select(0)
    assert "Mus musculus" in b.details.value and "light-sheet" in b.details.value
    assert "not staged" in b.details.value
    pixels = decode_png(b.thumbnail.value)
    assert pixels.shape == (40, 40, 3)  # 160 x 160 halved twice
    url = f"irods://{zone}/home/alice/lightsheet/mouse-embryo-lightsheet.ome.zarr"
    assert b.model.snippets()["stage"] == f"stage({url!r}, levels=[2])"
    # search under home by metadata (AVUs)
    b.crumb_bar.children[1].click()
    b.search_box.value = "rembi:biosample.organism=Danio rerio"
    b.search_button.click()
    assert names(b) == ["zebrafish-section.ome.zarr"]


# --- the devstack's OMERO ---------------------------------------------------------------------

def test_omero_sign_in_browse_details_and_thumbnail(devstack, tmp_path):
    from bioimage_gateway.widgets.data_browser import omero_root
    web_url = devstack.record()["data_services"]["omero"]["url"]
    b = DataBrowser([omero_root(web_url)], staging_cache_dir=tmp_path / "cache")
    assert names(b) == ["OMERO"]
    b.open_entry(0)  # OMERO has accounts of its own: the browser asks for them
    assert crumbs(b) == ["Catalogs"] and b.sign_in_box.layout.display != "none"
    assert "sign in" in b.error.value

    b.sign_in_user.value, b.sign_in_password.value = "alice", "not-her-password"
    b.sign_in_button.click()
    assert "sign-in failed" in b.error.value and b.sign_in_password.value == ""
    assert crumbs(b) == ["Catalogs"] and b.sign_in_box.layout.display != "none"

    b.sign_in_user.value, b.sign_in_password.value = "alice", "alice-demo"
    b.sign_in_button.click()
    assert b.sign_in_box.layout.display == "none" and b.sign_in_password.value == ""
    assert crumbs(b) == ["Catalogs", "OMERO"]
    # bob's project is there too: both are in OMERO group "imaging", whose members read each other's data
    assert names(b) == ["alice's demo project", "bob's demo project"]
    b.open_entry(names(b).index("alice's demo project"))
    assert names(b) == ["hela-cells-timelapse", "mouse-embryo-lightsheet"]
    b.open_entry(names(b).index("mouse-embryo-lightsheet"))
    assert names(b) == ["mouse-embryo-lightsheet"]
    assert crumbs(b) == ["Catalogs", "OMERO", "alice's demo project", "mouse-embryo-lightsheet"]
    b.select(0)
    assert "Mus musculus" in b.details.value and "light-sheet" in b.details.value
    pixels = decode_png(b.thumbnail.value)
    assert min(pixels.shape[:2]) >= 32 and pixels.std() > 0  # an image, not a blank
    snippets = b.model.snippets()
    assert snippets["setup"].endswith("omero = OmeroCatalog(%r, 'alice', getpass())" % web_url)
    assert "password" not in " ".join(snippets.values()).replace("getpass", "")
    assert "alice-demo" not in " ".join(snippets.values())
