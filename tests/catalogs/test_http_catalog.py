"""HttpCatalog through requests against Debian's nginx on loopback (``autoindex_format json``):
browse, stat, byte ranges with read-ahead, checksums from Digest headers, status codes mapped to
the catalog's errors, addresses refused before any request."""

from __future__ import annotations

import io
import time
import uuid

import pytest
from zarr_support import IMAGE_DIR, RAW, UNICODE_NAME, sha2_of

from bioimage_gateway.catalogs import (AuthenticationFailed, CatalogUnavailable, Entry, HttpCatalog,
                                       InvalidPath, NotFound, PermissionDenied, UnsafeName, Unsupported,
                                       open_catalog)
from bioimage_gateway.catalogs.http import RefusedRedirect, digest_sha2


@pytest.fixture
def web():
    catalog = HttpCatalog()
    yield catalog
    catalog.close()


# --- browse, stat, metadata -------------------------------------------------------------------

def test_lists_a_json_directory_index(web, nginx):
    entries = list(web.list(f"{nginx.url}/study1/"))
    assert [(e.name, e.kind, e.size) for e in entries] == [
        ("sub", "collection", None), ("notes.txt", "object", len("light-sheet run 3\n")),
        ("raw.bin", "object", len(RAW))]
    assert entries[0].url == f"{nginx.url}/study1/sub/"
    assert entries[2].url == f"{nginx.url}/study1/raw.bin"
    assert all(isinstance(e, Entry) and e.modified is not None for e in entries)
    # without the trailing slash, the server's redirect tells it is a collection
    assert [e.name for e in web.list(f"{nginx.url}/study1")] == ["sub", "notes.txt", "raw.bin"]
    assert web.stat(f"{nginx.url}/study1").kind == "collection"


def test_utf8_names_round_trip_through_urls(web, nginx):
    [entry] = web.list(f"{nginx.url}/unicode/")
    assert entry.name == UNICODE_NAME
    assert entry.url == f"{nginx.url}/unicode/Zellkern%20%C3%BC%20%231%20&%2010%25%20%E2%9C%93.tif"
    with web.open(entry.url) as f:
        assert f.read() == b"nucleus"


def test_stat_is_one_head_request(web, nginx):
    before = nginx.requests_logged()
    raw = web.stat(f"{nginx.url}/study1/raw.bin")
    assert (raw.kind, raw.name, raw.size) == ("object", "raw.bin", len(RAW))
    assert raw.modified is not None and raw.checksum is None
    assert nginx.requests_logged() - before == 1


def test_an_ome_zarr_folder_is_listed_as_one_image(web, nginx):
    [image] = web.list(f"{nginx.url}/images/")
    assert (image.name, image.kind, image.url) == (IMAGE_DIR, "image", f"{nginx.url}/images/{IMAGE_DIR}/")
    # nginx's index leaves out dot-files (.zattrs, .zgroup): zarr reads them by name, not by listing
    assert {e.name for e in web.list(image.url)} == {"s0", "s1", "s2"}
    assert b"multiscales" in web.read_range(image.url + ".zattrs")


def test_http_has_no_metadata_and_no_search(web, nginx):
    assert web.metadata(f"{nginx.url}/study1/raw.bin") == {}
    with pytest.raises(NotFound):
        web.metadata(f"{nginx.url}/study1/missing.bin")
    with pytest.raises(Unsupported, match="HTTP has no metadata to search"):
        web.search({"organism": "Mus musculus"}, under=f"{nginx.url}/")


def test_a_server_without_a_json_index_cannot_be_listed(web, nginx):
    with pytest.raises(Unsupported, match="no JSON directory index.*autoindex_format json"):
        list(web.list(f"{nginx.url}/html/"))


# --- open: byte ranges, read-ahead ------------------------------------------------------------

def test_open_reads_byte_ranges_with_few_requests(web, nginx):
    with web.open(f"{nginx.url}/study1/raw.bin") as f:
        assert f.size == len(RAW) and f.readable() and f.seekable() and not f.writable()
        f.seek(150_000)
        assert f.read(1000) == RAW[150_000:151_000]
        assert f.tell() == 151_000
        chunks = [f.read(100) for _ in range(300)]  # small sequential reads: served from read-ahead
        assert b"".join(chunks) == RAW[151_000:181_000]
        assert f.requests == 1
        f.seek(-10, io.SEEK_END)
        assert f.read() == RAW[-10:]
        assert f.read(5) == b""  # at the end
        f.seek(0)
        assert f.read() == RAW  # one large read, whatever the read-ahead
    assert web.read_range(f"{nginx.url}/study1/raw.bin", 10, 20) == RAW[10:20]
    assert web.read_range(f"{nginx.url}/study1/raw.bin", -5) == RAW[-5:]
    assert web.read_range(f"{nginx.url}/study1/raw.bin", len(RAW) + 10, None) == b""


def test_requests_reuse_pooled_connections(web, nginx):
    # nginx logs a request after answering it: the previous test's last line may come late,
    # so this test's requests are told apart by a query string (static files ignore it).
    mark = f"pool-{uuid.uuid4().hex}"
    for _ in range(5):
        web.read_range(f"{nginx.url}/study1/raw.bin?{mark}", 0, 10)
    web.stat(f"{nginx.url}/study1/notes.txt?{mark}")
    deadline = time.monotonic() + 10
    while len(lines := [line for line in nginx.log() if mark in line]) < 6 \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(lines) == 6
    assert len({line.split()[0] for line in lines}) == 1  # one TCP connection for all six requests


def test_a_server_ignoring_ranges_is_read_once(web, nginx):
    with web.open(f"{nginx.url}/noranges/raw.bin") as f:
        f.seek(200_000)
        assert f.read(10) == RAW[200_000:200_010]
        f.seek(5)
        assert f.read(10) == RAW[5:15]
        assert f.requests == 1
    assert web.read_range(f"{nginx.url}/noranges/raw.bin", 7, 9) == RAW[7:9]


# --- checksums ---------------------------------------------------------------------------------

def test_checksum_comes_from_digest_headers_in_irods_form(web, nginx):
    assert web.checksum(f"{nginx.url}/digest/raw.bin") == sha2_of(RAW)  # Repr-Digest (RFC 9530)
    assert web.stat(f"{nginx.url}/digest/raw.bin").checksum == sha2_of(RAW)
    assert web.checksum(f"{nginx.url}/digest/old.bin") == sha2_of(b"old style")  # Digest (RFC 3230)
    assert web.checksum(f"{nginx.url}/study1/raw.bin") is None  # the server states none
    assert web.checksum(f"{nginx.url}/study1/raw.bin", compute=True) == sha2_of(RAW)
    assert digest_sha2({"Repr-Digest": "sha-512=:AAAA:, sha-256=:abc=:"}) == "sha2:abc="
    assert digest_sha2({"Digest": "md5=xyz"}) is None


# --- bad input: a clear error, nothing requested ----------------------------------------------

def test_status_codes_become_catalog_errors(web, nginx):
    cases = [(f"{nginx.url}/study1/missing.bin", NotFound, "no such object.*HTTP 404"),
             (f"{nginx.url}/private/secret.bin", PermissionDenied, "permission denied.*HTTP 403"),
             (f"{nginx.url}/locked/secret.bin", PermissionDenied, "permission denied.*HTTP 403"),
             (f"{nginx.url}/login/data.bin", AuthenticationFailed, "wants credentials.*HTTP 401"),
             (f"{nginx.url}/broken/x.bin", CatalogUnavailable, "server failed.*HTTP 503")]
    for address, error, message in cases:
        for call in (web.stat, web.open, web.metadata, web.checksum, web.list):
            with pytest.raises(error, match=message) as err:
                call(address)
            assert err.value.path == address
    with HttpCatalog(auth=("reader", "reader-secret")) as authorised:
        with authorised.open(f"{nginx.url}/login/data.bin") as f:
            assert f.read() == b"behind a password"


def test_bad_addresses_are_refused_before_any_request(web, nginx):
    before = nginx.requests_logged()
    cases = [(f"{nginx.url}/study1/../private/secret.bin", r"'\.\.'"),
             (f"{nginx.url}/study1/%2e%2E/private/", r"'\.\.'"),
             (f"{nginx.url}/./study1/raw.bin", r"'\.\.'"),
             (f"{nginx.url}/study1/bad%FFname", "not valid UTF-8"),
             (b"http://127.0.0.1/bad\xff", "not valid UTF-8"),
             (f"{nginx.url}/a%00b", "NUL"),
             (f"{nginx.url}/study1/raw.bin#part", "fragment"),
             ("ftp://example.org/x", "not an http"),
             (f"{nginx.url}/" + "x" * 9000, "at most 8000")]
    for address, message in cases:
        for call in (web.stat, web.open, web.metadata, web.checksum, web.list):
            with pytest.raises(InvalidPath, match=message):
                call(address)
    assert nginx.requests_logged() == before


def test_a_long_name_the_server_refuses_is_an_invalid_path(web, nginx):
    with pytest.raises(InvalidPath, match="refused the address.*HTTP 414"):
        web.stat(f"{nginx.url}/" + "n" * 6000)


def test_an_unreachable_server_is_unavailable(nginx):
    from bioimage_gateway.devstack.processes import free_port
    with HttpCatalog(timeout=2) as web:
        with pytest.raises(CatalogUnavailable, match="could not reach"):
            web.stat(f"http://127.0.0.1:{free_port()}/x")


def test_open_catalog_gives_an_http_catalog(nginx):
    with open_catalog(f"{nginx.url}/study1/", headers={"User-Agent": "gateway-test"}) as web:
        assert isinstance(web, HttpCatalog)
        assert web.stat(f"{nginx.url}/study1/raw.bin").size == len(RAW)
        assert 'gateway-test' in (nginx.dir / "access.log").read_text()


# --- a hostile server: redirects and listings are checked like addresses -----------------------

def test_a_redirect_is_checked_like_an_address(web, hostile_web):
    from zarr_support import ESCAPE, ESCAPE_ENCODINGS, escaping_location

    for n, encoding in enumerate(ESCAPE_ENCODINGS):
        address = f"{hostile_web.url}/escape/{n}"
        for call in (web.stat, web.open, web.read_range, web.list, web.checksum):
            with pytest.raises(RefusedRedirect, match="'.' and '..' segments are not allowed") as refused:
                call(address)
            assert refused.value.path == address
            assert refused.value.name == hostile_web.url + escaping_location(encoding)
            assert f"refused the redirect of {address} to {refused.value.name!r}" in str(refused.value)
    # what requests would have followed to, named by a name that leads up and out
    assert ESCAPE.startswith("../")


def test_a_redirect_from_https_to_http_and_endless_redirects_are_refused(hostile_web):
    with HttpCatalog(verify=str(hostile_web.cert)) as web:
        address = f"{hostile_web.https_url}/down?to={hostile_web.url}/home/notes.txt"
        with pytest.raises(RefusedRedirect, match="from https to plain http") as refused:
            web.stat(address)
        assert refused.value.name == f"{hostile_web.url}/home/notes.txt" and refused.value.path == address
        with pytest.raises(RefusedRedirect, match="redirected more than 10 times"):
            web.stat(f"{hostile_web.url}/loop")


def test_a_listing_with_a_bad_name_is_refused_naming_it_not_skipped(web, hostile_web):
    from zarr_support import HOSTILE_LISTINGS, HOSTILE_NAMES

    for listing in HOSTILE_LISTINGS:
        address = f"{hostile_web.url}/listing/{listing}/"
        with pytest.raises(UnsafeName) as refused:
            list(web.list(address))
        assert refused.value.name == HOSTILE_NAMES[listing]
        assert f"{HOSTILE_NAMES[listing]!r} from the listing of {address}" in str(refused.value)
