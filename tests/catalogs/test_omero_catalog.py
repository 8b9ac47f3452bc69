"""OmeroCatalog over HTTP (requests), against the OMERO.web stand-in."""

from __future__ import annotations

import json
import math
import zlib

import pytest
from omero_support import (MANY, MOUSE, OMERO_USERS, SIZE, decode_grey_png, expected_plane, seed_omero,
                           start_omero, stop_omero)

from bioimage_gateway.catalogs import (AuthenticationFailed, CatalogUnavailable, Entry, InvalidPath, NotFound,
                                       PermissionDenied, Unsupported)
from bioimage_gateway.catalogs.omero import OmeroCatalog
from bioimage_gateway.catalogs.rembi import to_rembi


def addr(omero, kind: str, name: str | None = None) -> str:
    host = f"{omero.host}:{omero.port}"
    return f"omero://{host}/" if kind == "root" else f"omero://{host}/{kind}/{omero.ids[name]}"


# --- browse, stat ---------------------------------------------------------------------------

def test_root_lists_projects_screens_and_loose_objects_the_user_may_read(omero, omero_alice):
    root = [(e.name, e.kind) for e in omero_alice.list(addr(omero, "root"))]
    assert root == [("Big", "collection"), ("Bob shared", "collection"), ("Embryo study", "collection"),
                    ("Screen A", "collection"), ("loose image", "object")]
    # bob's dataset in the private group is neither a root entry nor anywhere else for alice
    assert "bob private" not in {name for name, _ in root}


def test_browse_project_dataset_image_with_urls(omero, omero_alice):
    datasets = list(omero_alice.list(addr(omero, "project", "embryo")))
    assert [(e.name, e.url) for e in datasets] == [
        ("Confocal", addr(omero, "dataset", "confocal")), ("Light-sheet day 1", addr(omero, "dataset", "day1"))]
    images = list(omero_alice.list(datasets[1].url))
    assert [(e.name, e.kind, e.url) for e in images] == [
        ("embryo-1.ome.zarr", "object", addr(omero, "image", "embryo1")),
        ("embryo-2.ome.zarr", "object", addr(omero, "image", "embryo2"))]
    assert all(isinstance(e, Entry) and e.size is None for e in images)  # pixels, not a file
    # listing an image gives the image itself, as listing a file does
    assert list(omero_alice.list(images[0].url)) == [images[0]]


def test_screens_plates_and_wells(omero, omero_alice):
    assert [e.name for e in omero_alice.list(addr(omero, "screen", "screen"))] == ["Plate 1"]
    wells = list(omero_alice.list(addr(omero, "plate", "plate")))
    assert [(e.name, e.kind) for e in wells] == [("A1", "object"), ("A2", "object")]


def test_stat_describes_images_and_containers(omero, omero_alice):
    image = omero_alice.stat(addr(omero, "image", "embryo1"))
    assert (image.name, image.kind, image.url) == ("embryo-1.ome.zarr", "object", addr(omero, "image", "embryo1"))
    project = omero_alice.stat(addr(omero, "project", "embryo") + "/")  # a trailing slash is fine
    assert (project.name, project.kind) == ("Embryo study", "collection")
    assert omero_alice.stat(addr(omero, "root")).kind == "collection"


def test_a_group_of_the_user_lists_its_data_only(omero, omero_alice):
    lab = f"omero://{omero.host}:{omero.port}/group/{omero.ids['lab_group']}"
    assert [e.name for e in omero_alice.list(lab)] == ["Big", "Bob shared", "Embryo study", "Screen A",
                                                       "loose image"]


# --- paging -----------------------------------------------------------------------------------

def test_listing_hundreds_of_images_is_lazy_and_one_request_per_page(omero, omero_alice, omero_requests):
    path = "/api/v0/m/datasets/{id}/images/"
    before = omero_requests(path)
    listing = omero_alice.list(addr(omero, "dataset", "many"))
    first = next(listing)
    assert omero_requests(path) - before == 1  # only the first page so far
    names = [first.name] + [e.name for e in listing]
    assert names == [f"img-{i:04d}" for i in range(MANY)]
    assert omero_requests(path) - before == math.ceil(MANY / 200)  # never one request per image


# --- metadata and search -------------------------------------------------------------------------

def test_metadata_is_the_map_annotations_as_value_unit_pairs(omero, omero_alice):
    meta = omero_alice.metadata(addr(omero, "image", "embryo1"))
    assert meta["organism"] == [("Mus musculus", "")]
    assert meta["channel"] == [("GFP", ""), ("DAPI", "")]  # repeated keys keep every value, in order
    assert set(meta) == {k for k, _ in MOUSE}
    assert omero_alice.metadata(addr(omero, "dataset", "day1")) == {"modality": [("light-sheet", "")]}
    assert omero_alice.metadata(addr(omero, "dataset", "confocal")) == {}
    # bob's image in the lab group is readable, annotations included
    assert omero_alice.metadata(addr(omero, "image", "bob_shared"))["organism"] == [("Mus musculus", "")]


def test_metadata_reads_as_rembi(omero, omero_alice):
    meta = omero_alice.metadata(addr(omero, "image", "embryo1"))
    rembi = to_rembi(meta, {"organism": "Biosample.organism", "modality": "Image acquisition.imaging_method"})
    assert rembi["biosample"] == {"organism": "Mus musculus", "strain": "C57BL/6"}
    assert rembi["image_acquisition"] == {"imaging_method": "light-sheet", "objective": "20x/1.0 W"}
    assert rembi["other"] == {"channel": ["GFP", "DAPI"]}
    project = to_rembi(omero_alice.metadata(addr(omero, "project", "embryo")))
    assert project == {"study": {"title": "Mouse embryo atlas"}}


def test_search_by_key_value_finds_what_the_user_may_read(omero, omero_alice):
    mouse = {e.url for e in omero_alice.search({"organism": "Mus musculus"})}
    # bob's private image carries the same pair but alice may not read it
    assert mouse == {addr(omero, "image", n) for n in ("embryo1", "embryo2", "bob_shared")}
    both = {e.name for e in omero_alice.search({"organism": "Mus musculus", "modality": "light-sheet"})}
    assert both == {"embryo-1.ome.zarr", "bob-mouse"}
    assert {e.name for e in omero_alice.search({"modality": "light-sheet"})} == {
        "Light-sheet day 1", "embryo-1.ome.zarr", "bob-mouse"}  # a dataset matches too
    assert {e.name for e in omero_alice.search({"organism": "Homo%"})} == {"HeLa cells"}
    assert list(omero_alice.search({"organism": "Danio rerio"})) == []


def test_search_under_a_container_and_its_request_count(omero, omero_alice, omero_requests):
    day1 = addr(omero, "dataset", "day1")
    assert [e.name for e in omero_alice.search({"modality": "confocal"}, under=day1)] == ["embryo-2.ome.zarr"]
    embryo = addr(omero, "project", "embryo")
    assert {e.name for e in omero_alice.search({"modality": "confocal"}, under=embryo)} == {
        "embryo-2.ome.zarr", "HeLa cells"}
    assert [e.name for e in omero_alice.search({"compound": "taxol"})] == ["A2"]  # an image in a well
    many = addr(omero, "dataset", "many")
    before_pages = omero_requests("/api/v0/m/datasets/{id}/images/")
    before_anns = omero_requests("/webclient/api/annotations/")
    assert list(omero_alice.search({"organism": "Mus musculus"}, under=many)) == []
    pages = math.ceil(MANY / 200)
    assert omero_requests("/api/v0/m/datasets/{id}/images/") - before_pages == pages
    assert omero_requests("/webclient/api/annotations/") - before_anns == pages  # one per page, not per image


# --- pixels: thumbnail and OME-Zarr -----------------------------------------------------------

def test_thumbnail_is_a_png_of_the_image(omero, omero_alice):
    data = omero_alice.thumbnail(addr(omero, "image", "embryo1"))
    width, height, rows = decode_grey_png(data)
    t, c, z, y, x = SIZE
    assert (width, height) == (x, y)  # smaller than 96: not scaled
    assert rows == expected_plane(0, 0, z // 2, y, x)
    small = decode_grey_png(omero_alice.thumbnail(omero.ids["embryo1"], size=32))
    assert (small[0], small[1]) == (32, 24)


def test_zarr_endpoint_read_with_the_zarr_package(omero, omero_alice):
    url = omero_alice.zarr_url(addr(omero, "image", "embryo1"))
    assert url == f"{omero.url}/zarr/v0.4/image/{omero.ids['embryo1']}.zarr"
    try:
        import zarr  # noqa: F401  (the test extra; without it the same reads go key by key)
    except ImportError:
        group = _HttpZarr(omero_alice, addr(omero, "image", "embryo1"))
    else:
        group = omero_alice.open_zarr(addr(omero, "image", "embryo1"))
    multiscales = group.attrs["multiscales"][0]
    assert [a["name"] for a in multiscales["axes"]] == ["t", "c", "z", "y", "x"]
    assert [d["path"] for d in multiscales["datasets"]] == ["0", "1"]
    full, half = group["0"], group["1"]
    t, c, z, y, x = SIZE
    assert tuple(full.shape) == SIZE and tuple(half.shape) == (t, c, z, y // 2, x // 2)
    assert full[1, 1, 2].tolist() == expected_plane(1, 1, 2, y, x)
    assert half[0, 1, 0].tolist() == expected_plane(0, 1, 0, y // 2, x // 2, step=2)


class _HttpZarr:
    """The little of zarr's reading API the test uses, over plain HTTP reads of the OME-Zarr keys."""

    def __init__(self, catalog, image, path=""):
        self.catalog, self.image, self.path = catalog, image, path
        self.attrs = json.loads(catalog.zarr_key(image, ".zattrs")) if not path else {}
        if path:
            meta = json.loads(catalog.zarr_key(image, f"{path}/.zarray"))
            self.shape, self.chunks = meta["shape"], meta["chunks"]

    def __getitem__(self, index):
        if isinstance(index, str):
            return _HttpZarr(self.catalog, self.image, index)
        t, c, z = index
        cy, cx = self.chunks[3:]
        height, width = self.shape[3:]
        rows = [[0] * width for _ in range(height)]
        for by in range(-(-height // cy)):
            for bx in range(-(-width // cx)):
                data = zlib.decompress(self.catalog.zarr_key(self.image, f"{self.path}/{t}/{c}/{z}/{by}/{bx}"))
                for j in range(min(cy, height - by * cy)):
                    for i in range(min(cx, width - bx * cx)):
                        rows[by * cy + j][bx * cx + i] = data[j * cx + i]
        return _Plane(rows)


class _Plane(list):
    def tolist(self):
        return list(self)


def test_zarr_endpoint_read_key_by_key_over_http(omero, omero_alice):
    image = addr(omero, "image", "embryo1")
    attrs = json.loads(omero_alice.zarr_key(image, ".zattrs"))
    assert attrs["multiscales"][0]["version"] == "0.4"
    zarray = json.loads(omero_alice.zarr_key(image, "0/.zarray"))
    assert zarray["shape"] == list(SIZE) and zarray["chunks"] == [1, 1, 1, 32, 32]
    # the chunk at t=1, c=0, z=1, y-block 1, x-block 0: rows 32..47 (padded to 32), columns 0..31
    chunk = zlib.decompress(omero_alice.zarr_key(image, "0/1/0/1/1/0"))
    rows = [list(chunk[r * 32:(r + 1) * 32]) for r in range(16)]
    assert rows == [row[:32] for row in expected_plane(1, 0, 1, 48, 64)[32:48]]
    with pytest.raises(NotFound):
        omero_alice.zarr_key(image, "0/9/9/9/9/9")


# --- logins -----------------------------------------------------------------------------------

def test_login_with_an_existing_session_key_or_web_session(omero, omero_alice):
    key = omero_alice.session_key
    assert key and omero_alice.event_context["userName"] == "alice"
    with OmeroCatalog(omero.url, session_key=key) as joined:
        assert [e.name for e in joined.list(addr(omero, "dataset", "day1"))] == ["embryo-1.ome.zarr",
                                                                                 "embryo-2.ome.zarr"]
        with pytest.raises(PermissionDenied):  # still alice: bob's private image stays out of reach
            joined.stat(addr(omero, "image", "bob_private"))
    # from an address alone, as open_catalog() does, naming where OMERO.web answers
    with OmeroCatalog.from_url(addr(omero, "image", "cells"), url=omero.url, session_key=key) as by_address:
        assert by_address.stat(addr(omero, "image", "cells")).name == "HeLa cells"
    with OmeroCatalog(omero.url, web_session=omero_alice.web_session) as same:
        assert same.stat(addr(omero, "image", "cells")).name == "HeLa cells"
    seeded = omero.store()
    bob_key = seeded.create_session("bob")  # a session made elsewhere (e.g. by OMERO.insight)
    seeded.close()
    with OmeroCatalog(omero.url, session_key=bob_key) as bob:
        assert bob.stat(addr(omero, "image", "bob_private")).name == "bob-secret"


def test_wrong_password_or_session_is_an_authentication_failure(omero):
    before = omero.status()["auth_failures"]
    with pytest.raises(AuthenticationFailed, match="refused the credentials of alice.*user name and password"):
        OmeroCatalog(omero.url, "alice", "not-her-password")
    with pytest.raises(AuthenticationFailed):
        OmeroCatalog(omero.url, "mallory", "whatever")
    assert omero.status()["auth_failures"] == before + 2
    with pytest.raises(AuthenticationFailed, match="session key"):
        OmeroCatalog(omero.url, session_key="00000000-0000-0000-0000-000000000000")
    with pytest.raises(AuthenticationFailed, match="web session"):
        OmeroCatalog(omero.url, web_session="no-such-session")


# --- bad input: a clear error, nothing changed ------------------------------------------------

def _snapshot(omero, catalog):
    return ([e.name for e in catalog.list(addr(omero, "project", "embryo"))],
            catalog.metadata(addr(omero, "image", "embryo1")))


CALLS = ("list", "stat", "metadata", "open", "checksum")


def test_bad_addresses_are_refused_before_any_request(omero, omero_alice, omero_requests):
    state = _snapshot(omero, omero_alice)
    host = f"{omero.host}:{omero.port}"
    bad = {f"omero://{host}/image/../project/1": r"'\.\.'",
           f"omero://{host}/image/%2E%2E": r"'\.\.'",
           f"omero://{host}/image/-3": "positive integer",
           f"omero://{host}/image/abc": "positive integer",
           f"omero://{host}/image/0": "positive integer",
           f"omero://{host}/image/1?bsession=x": "no query",
           f"omero://{host}/well/1": "expected omero://",
           "omero://elsewhere.example.org/image/1": "not on this OMERO server",
           f"irods://{host}/image/1": "not an omero:// address",
           f"omero://{host}/image/" + "9" * 3000: "at most 2048"}
    before = omero_requests()
    for path, message in bad.items():
        for call in CALLS:
            with pytest.raises(InvalidPath, match=message) as err:
                result = getattr(omero_alice, call)(path)
                list(result)
            assert err.value.path == path
        with pytest.raises(InvalidPath):
            omero_alice.thumbnail(path)
        with pytest.raises(InvalidPath):
            omero_alice.zarr_url(path)
    assert omero_requests() == before
    assert _snapshot(omero, omero_alice) == state


def test_missing_id_is_not_found_naming_it(omero, omero_alice):
    state = _snapshot(omero, omero_alice)
    host = f"{omero.host}:{omero.port}"
    for kind in ("image", "dataset", "project", "screen", "plate"):
        missing = f"omero://{host}/{kind}/987654"
        for call in ("list", "stat", "metadata", "open", "checksum"):
            with pytest.raises(NotFound, match=f"{kind}/987654: not found") as err:
                getattr(omero_alice, call)(missing)
            assert err.value.path == missing
    with pytest.raises(NotFound):
        omero_alice.thumbnail(987654)
    assert _snapshot(omero, omero_alice) == state


def test_another_users_private_image_is_permission_denied(omero, omero_alice):
    private = addr(omero, "image", "bob_private")
    for call in ("stat", "metadata", "open", "checksum", "thumbnail", "zarr_url"):
        with pytest.raises(PermissionDenied, match="not readable by alice") as err:
            getattr(omero_alice, call)(private)
        assert err.value.path == private
    with pytest.raises(PermissionDenied):
        omero_alice.list(addr(omero, "dataset", "bob_private_ds"))
    # a group alice is not a member of: OMERO.web refuses outright (403), not "not found"
    other = f"omero://{omero.host}:{omero.port}/group/{omero.ids['bob_only_group']}"
    with pytest.raises(PermissionDenied, match="not a member of group") as err:
        list(omero_alice.list(other))
    assert not isinstance(err.value, NotFound)
    # what bob shares with the lab stays readable
    assert omero_alice.stat(addr(omero, "image", "bob_shared")).name == "bob-mouse"


def test_open_and_checksum_of_an_image_say_where_the_pixels_are(omero, omero_alice):
    image = addr(omero, "image", "embryo1")
    with pytest.raises(Unsupported, match="no bytes to open.*zarr_url") as err:
        omero_alice.open(image)
    assert isinstance(err.value, NotImplementedError) and err.value.path == image
    with pytest.raises(Unsupported, match="no checksum"):
        omero_alice.checksum(image)
    with pytest.raises(InvalidPath, match="is a collection"):
        omero_alice.open(addr(omero, "project", "embryo"))


# --- stand-ins with options -------------------------------------------------------------------

FEW = 250  # images in "many" on the stand-ins started with options: two pages


@pytest.fixture
def omero_with():
    started = []

    def start(**options):
        standin = start_omero(**options)
        started.append(standin)
        standin.ids = seed_omero(standin, many=FEW)
        return standin

    yield start
    for standin in started:
        stop_omero(standin)


def test_dropped_connection_mid_listing_is_retried_once(omero_with):
    # the stand-in closes the connection instead of answering its 3rd object request: the stat,
    # the first page, then the second page is dropped once
    standin = omero_with(drop_after=2, drop_times=1)
    with OmeroCatalog(standin.url, "alice", OMERO_USERS["alice"]) as catalog:
        names = [e.name for e in catalog.list(addr(standin, "dataset", "many"))]
    assert names == [f"img-{i:04d}" for i in range(FEW)]  # complete, no duplicates
    assert standin.status()["drops"] == 1


def test_connection_dropped_again_is_reported_naming_the_address(omero_with):
    standin = omero_with(drop_after=2, drop_times=2)
    seen = []
    many = addr(standin, "dataset", "many")
    with OmeroCatalog(standin.url, "alice", OMERO_USERS["alice"]) as catalog:
        with pytest.raises(CatalogUnavailable, match=f"dataset/{standin.ids['many']}") as err:
            for entry in catalog.list(many):
                seen.append(entry.name)
    assert err.value.path == many
    assert seen == [f"img-{i:04d}" for i in range(200)]  # what came before the drop
    assert standin.status()["drops"] == 2


def test_an_omero_web_without_zarr_says_so(omero_with):
    standin = omero_with(zarr=False)
    with OmeroCatalog(standin.url, "alice", OMERO_USERS["alice"]) as catalog:
        with pytest.raises(Unsupported, match="serves no OME-Zarr"):
            catalog.zarr_url(addr(standin, "image", "embryo1"))
        assert catalog.thumbnail(standin.ids["embryo1"])[:4] == b"\x89PNG"
