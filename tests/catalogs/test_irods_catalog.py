"""IrodsCatalog through the real python-irodsclient, over TCP, against the iRODS stand-in."""

from __future__ import annotations

import io
import json
import math
import os
import time

import pytest
from irods.password_obfuscation import encode as scramble
from irods_support import (BIG, NOTES, RAW, UNICODE_NAME, USERS, ZONE, client, home, seed_small, sha2_of,
                           start_standin, stop_standin)

from bioimage_gateway.catalogs import (AuthenticationFailed, CatalogUnavailable, Entry, InvalidPath,
                                       IrodsCatalog, NotFound, PermissionDenied, UnsafeName)

A = f"irods://{ZONE}/home/alice"
B = f"irods://{ZONE}/home/bob"
PAGE = 256  # rows in one GenQuery reply (iRODS MAX_SQL_ROWS)


# --- browse, stat, metadata, search, open, checksum -------------------------------------------

def test_browse_lists_subcollections_then_objects_with_sizes(alice):
    top = {e.name: e for e in alice.list(A)}
    assert {"study1", "study2", "plates"} <= set(top)
    assert all(e.kind == "collection" for e in top.values())
    assert top["study1"].url == f"{A}/study1"

    study1 = list(alice.list(f"{A}/study1"))
    assert [(e.name, e.kind, e.size) for e in study1] == [
        ("notes.txt", "object", len(NOTES)), ("raw.tif", "object", len(RAW))]
    assert all(isinstance(e, Entry) and e.modified is not None for e in study1)


def test_utf8_names_round_trip_through_urls(alice):
    [entry] = alice.list(f"{A}/unicode")
    assert entry.name == UNICODE_NAME
    assert entry.url == f"{A}/unicode/Zellkern%20%C3%BC%20%231%20&%2010%25%20%E2%9C%93.tif"
    assert alice.stat(entry.url).size == len(b"nucleus")
    with alice.open(entry.url) as f:
        assert f.read() == b"nucleus"
    assert alice.stat(f"/{ZONE}/home/alice/unicode/{UNICODE_NAME}").url == entry.url


def test_stat_describes_objects_and_collections(alice):
    raw = alice.stat(f"{A}/study1/raw.tif")
    assert (raw.kind, raw.name, raw.size) == ("object", "raw.tif", len(RAW))
    assert raw.checksum == sha2_of(RAW)
    coll = alice.stat(f"/{ZONE}/home/alice/study1")  # a plain logical path works too
    assert (coll.kind, coll.url) == ("collection", f"{A}/study1")


def test_metadata_gives_avus_as_value_unit_pairs(alice):
    meta = alice.metadata(f"{A}/study1/raw.tif")
    assert meta["organism"] == [("Mus musculus", "")]
    assert sorted(meta["voxel_size"]) == [("0.5", "um"), ("2.0", "um")]
    assert alice.metadata(f"{A}/study1") == {"organism": [("Mus musculus", "")],
                                             "modality": [("light-sheet", "")]}
    assert alice.metadata(f"{A}/study2") == {}


def test_search_by_avu_finds_objects_and_collections_the_user_may_read(alice):
    found = {e.url for e in alice.search({"organism": "Mus musculus"})}
    # bob's private object carries the same AVU but alice may not read it
    assert found == {f"{A}/study1", f"{A}/study1/raw.tif"}
    both = {e.url for e in alice.search({"organism": "Mus musculus", "modality": "light-sheet"})}
    assert both == {f"{A}/study1", f"{A}/study1/raw.tif"}
    light_sheet = {e.url for e in alice.search({"modality": "light-sheet"}, under=f"{A}/study2")}
    assert light_sheet == {f"{A}/study2/cells.tif"}
    assert {e.name for e in alice.search({"organism": "Homo%"})} == {"cells.tif"}
    assert list(alice.search({"organism": "Danio rerio"})) == []


def test_open_reads_byte_ranges(alice):
    with alice.open(f"{A}/study1/raw.tif") as f:
        assert f.size == len(RAW) and f.readable() and f.seekable() and not f.writable()
        f.seek(150_000)
        assert f.read(1000) == RAW[150_000:151_000]
        f.seek(10)
        assert f.read(5) == RAW[10:15]
        assert f.tell() == 15
        f.seek(-100, io.SEEK_END)
        assert f.read() == RAW[-100:]
        assert f.read(10) == b""  # end of object
    with alice.open(f"{A}/study1/notes.txt") as f:
        assert f.read() == NOTES


def test_read_range_reads_in_a_few_round_trips(alice, requests_made):
    raw = f"{A}/study1/raw.tif"
    before = requests_made()
    assert alice.read_range(raw) == RAW
    # open, read, read (end of object), close: no stat, no buffered file's seeks
    assert requests_made() - before <= 4
    assert alice.read_range(raw, 150_000, 151_000) == RAW[150_000:151_000]
    assert alice.read_range(raw, -100) == RAW[-100:]
    assert alice.read_range(raw, 10) == RAW[10:]
    with pytest.raises(NotFound, match="study1/missing.tif"):
        alice.read_range(f"{A}/study1/missing.tif")


def test_checksum_is_irods_sha2_of_the_content(alice, requests_made):
    assert alice.checksum(f"{A}/study1/raw.tif") == sha2_of(RAW)
    # notes.txt was written without a checksum: the server computes and records it once
    before = requests_made("DATA_OBJ_CHKSUM_AN")
    assert alice.checksum(f"{A}/study1/notes.txt") == sha2_of(NOTES)
    assert requests_made("DATA_OBJ_CHKSUM_AN") == before + 1
    assert alice.stat(f"{A}/study1/notes.txt").checksum == sha2_of(NOTES)
    assert alice.checksum(f"{A}/study1/notes.txt") == sha2_of(NOTES)
    assert requests_made("DATA_OBJ_CHKSUM_AN") == before + 1  # read, not recomputed


# --- paging -----------------------------------------------------------------------------------

def test_listing_thousands_of_objects_pages_one_genquery_per_page(alice, requests_made):
    before = requests_made("GEN_QUERY_AN")
    listing = alice.list(f"{A}/plates")
    first = next(listing)
    # lazily: only the sub-collection query and the first page have been asked for
    assert requests_made("GEN_QUERY_AN") - before == 2
    names = [first.name] + [e.name for e in listing]
    assert names == [f"well-{i:05d}.zarr.json" for i in range(BIG)]
    pages = math.ceil(BIG / PAGE)
    assert requests_made("GEN_QUERY_AN") - before == 1 + pages  # never one request per object


# --- bad input: a clear error, nothing changed ------------------------------------------------

def _snapshot(catalog):
    return [(e.name, e.size) for e in catalog.list(A)], catalog.metadata(f"{A}/study1")


def test_dot_dot_is_refused_before_any_request(alice, requests_made):
    state = _snapshot(alice)
    before = requests_made()
    for path in (f"{A}/../bob/private", f"{A}/study1/./raw.tif", f"/{ZONE}/home/alice/..",
                 f"{A}/%2E%2E/bob"):
        for call in (alice.list, alice.stat, alice.open, alice.metadata, alice.checksum):
            with pytest.raises(InvalidPath, match=r"'\.\.'") as err:
                call(path)
            assert err.value.path == path
    assert requests_made() == before
    assert _snapshot(alice) == state


def test_missing_path_is_not_found_naming_it(alice):
    state = _snapshot(alice)
    for call in (alice.list, alice.stat, alice.open, alice.metadata, alice.checksum):
        with pytest.raises(NotFound, match="home/alice/no-such-thing") as err:
            call(f"{A}/no-such-thing")
        assert err.value.path == f"{A}/no-such-thing"
    assert _snapshot(alice) == state


def test_another_users_private_collection_is_permission_denied(alice):
    private = f"{B}/private"
    for call in (alice.list, alice.stat, alice.metadata):
        with pytest.raises(PermissionDenied, match="home/bob/private") as err:
            call(private)
        assert err.value.path == private
    with pytest.raises(PermissionDenied, match="secret.tif"):
        alice.open(f"{private}/secret.tif")
    with pytest.raises(PermissionDenied):
        alice.checksum(f"{private}/secret.tif")
    # what bob shares with the lab stays readable, and his private collection is not listed
    assert [e.name for e in alice.list(B)] == ["shared"]
    with alice.open(f"{B}/shared/for-lab.txt") as f:
        assert f.read() == b"shared with the lab"


def test_non_utf8_names_are_refused_before_any_request(alice, requests_made):
    before = requests_made()
    bad = [f"/{ZONE}/home/alice/".encode() + b"caf\xe9.tif",  # Latin-1 bytes
           os.fsdecode(f"/{ZONE}/home/alice/".encode() + b"\xff.tif"),  # a str with a lone surrogate
           f"{A}/caf%E9.tif"]  # a percent-encoded Latin-1 byte
    for path in bad:
        with pytest.raises(InvalidPath, match="not valid UTF-8"):
            alice.stat(path)
        with pytest.raises(InvalidPath, match="not valid UTF-8"):
            alice.list(path)
    assert requests_made() == before
    # UTF-8 names that are not ASCII are fine (and come back percent-encoded in URLs)
    assert alice.stat(f"/{ZONE}/home/alice/study1").kind == "collection"


def test_very_long_paths_are_refused_with_a_clear_error(alice, irods, requests_made):
    long_path = f"{A}/" + "x" * 1100
    before = requests_made()
    with pytest.raises(InvalidPath, match=r"\d+ bytes long; iRODS allows at most 1024"):
        alice.stat(long_path)
    with pytest.raises(InvalidPath, match="at most 1024"):
        list(alice.list(long_path))
    assert requests_made() == before
    # the server refuses them too, creating nothing
    import irods.exception as ix
    with client(irods, "alice") as s:
        with pytest.raises(ix.USER_PATH_EXCEEDS_MAX):
            s.collections.create(f"{home('alice')}/" + "y" * 1100)
    assert all(len(e.name) < 1000 for e in alice.list(A))


def test_wrong_password_is_an_authentication_failure(irods):
    before = irods.status()["auth_failures"]
    with pytest.raises(AuthenticationFailed, match="refused the credentials"):
        IrodsCatalog(irods.host, irods.port, "alice", ZONE, "not-her-password")
    with pytest.raises(AuthenticationFailed):
        IrodsCatalog(irods.host, irods.port, "mallory", ZONE, "whatever")
    assert irods.status()["auth_failures"] == before + 2


def test_credentials_from_irods_environment_file(irods, tmp_path, monkeypatch):
    env = tmp_path / ".irods" / "irods_environment.json"
    env.parent.mkdir()
    env.write_text(json.dumps(irods.environment("alice")))
    # with a password given here
    with IrodsCatalog(env_file=env, password=USERS["alice"]) as catalog:
        assert catalog.stat(f"{A}/study1").kind == "collection"
    # with the scrambled password an `iinit` leaves in ~/.irods/.irodsA
    (env.parent / ".irodsA").write_text(scramble(USERS["alice"]))
    monkeypatch.setenv("IRODS_ENVIRONMENT_FILE", str(env))
    monkeypatch.setenv("IRODS_AUTHENTICATION_FILE", str(env.parent / ".irodsA"))
    with IrodsCatalog() as catalog:
        assert catalog.user == "alice"
        assert [e.name for e in catalog.list(f"{A}/study2")] == ["cells.tif"]


def test_connections_are_pooled_and_reused(irods, alice):
    before = irods.status()["connections"]
    for _ in range(5):
        alice.stat(f"{A}/study1")
        list(alice.list(f"{A}/study2"))
    assert irods.status()["connections"] == before


# --- a dropped connection mid-listing --------------------------------------------------------

@pytest.fixture
def flaky():
    """A stand-in that drops the connection instead of answering its 4th GenQuery (once, or twice)."""
    started = []

    def start(times: int):
        standin = start_standin(drop_after=3, drop_api="GEN_QUERY_AN", drop_times=times)
        started.append(standin)
        seed_small(standin, 1000)
        return standin

    yield start
    for standin in started:
        stop_standin(standin)


def test_dropped_connection_mid_listing_is_retried_once(flaky):
    standin = flaky(times=1)
    with IrodsCatalog(standin.host, standin.port, "alice", ZONE, USERS["alice"]) as catalog:
        names = [e.name for e in catalog.list(f"{A}/many")]
    assert names == [f"item-{i:04d}" for i in range(1000)]  # complete, no duplicates
    assert standin.status()["drops"] == 1


def test_connection_dropped_again_is_reported_naming_the_path(flaky):
    standin = flaky(times=2)
    seen = []
    with IrodsCatalog(standin.host, standin.port, "alice", ZONE, USERS["alice"]) as catalog:
        with pytest.raises(CatalogUnavailable, match="home/alice/many") as err:
            for entry in catalog.list(f"{A}/many"):
                seen.append(entry.name)
    assert err.value.path == f"{A}/many"
    assert seen == [f"item-{i:04d}" for i in range(2 * PAGE)]  # what came before the drop
    assert standin.status()["drops"] == 2


# --- a remote zone --------------------------------------------------------------------------

def test_latency_option_slows_every_request_like_a_remote_zone():
    standin = start_standin(latency_ms=40)
    try:
        with IrodsCatalog(standin.host, standin.port, "alice", ZONE, USERS["alice"]) as catalog:
            t0 = time.monotonic()
            for _ in range(3):
                catalog.stat(f"{A}")
            elapsed = time.monotonic() - t0
        assert elapsed >= 3 * 0.040
    finally:
        stop_standin(standin)


# --- names the server should never give --------------------------------------------------------

@pytest.mark.parametrize("kind", ["data object", "collection"])
def test_a_listing_with_a_name_that_leads_out_is_refused_naming_it(alice, irods, kind):
    """A damaged catalogue or hostile server answers the listing's query with ``..`` in a name
    (the stand-in's ``seed_unchecked_name``; the real server's checks never make one)."""
    coll = f"/{ZONE}/home/alice/hostile-{kind.replace(' ', '-')}"
    catalogue = irods.catalogue()
    try:
        catalogue.seed_objects(f"{coll}/sub", "alice", [("x.txt", b"x")])
        if kind == "collection":
            catalogue.seed_unchecked_name(f"{coll}/sub", "../../bob")
        else:
            catalogue.seed_unchecked_name(f"{coll}/sub/x.txt", "../x.txt")
    finally:
        catalogue.close()
    listed = f"irods:/{coll}" if kind == "collection" else f"irods:/{coll}/sub"
    with pytest.raises(UnsafeName) as refused:
        list(alice.list(listed))
    assert refused.value.name == ("../../bob" if kind == "collection" else "../x.txt")
    assert f"{refused.value.name!r} from {listed}" in str(refused.value)
