"""The checks staging relies on, as logic: names from catalogs (``catalogs.names``) and the
folders and files a stage trusts (``staging.private``), on a temporary folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from bioimage_gateway.catalogs import InvalidPath
from bioimage_gateway.catalogs.names import UnsafeName, check_key, check_name, safe_key
from bioimage_gateway.staging import UntrustedPath
from bioimage_gateway.staging.private import make_folders, open_own, own_dir, private_dir, read_own_json

NOBODY = 65534  # another user's files (chown needs root, as the tests run)


# --- names -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, why", [("", "is empty"), (".", "is '.'"), ("..", "is '..'"),
                                       ("../x", "contains '/'"), ("a/b", "contains '/'"),
                                       ("/etc", "is absolute"), ("a\0b", "NUL"), (None, "not text")])
def test_a_bad_name_is_refused_naming_it_and_where_it_came_from(name, why):
    with pytest.raises(UnsafeName, match=why) as refused:
        check_name(name, "http://example.org/listing/")
    assert isinstance(refused.value, InvalidPath)
    assert refused.value.name == name and refused.value.path == "http://example.org/listing/"
    assert f"{name!r} from http://example.org/listing/" in str(refused.value)


@pytest.mark.parametrize("name", ["a", ".zattrs", "..a", "a..", "a b", "Zellkern ü #1.tif",
                                  "..%2Fx", "%2E%2E"])  # decoded already: "%2F" is 3 characters here
def test_a_plain_name_passes(name):
    assert check_name(name, "x") == name


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "a/./b", "a/../b", "..", ".", "../a", "./a",
                                 "a/..", "a/.", "a\0b", "img/s0/../../../x"])
def test_a_key_leading_anywhere_but_down_is_refused(key):
    assert not safe_key(key)
    with pytest.raises(UnsafeName) as refused:
        check_key(key, "irods://zone/home/alice/x")
    assert refused.value.name == key and "irods://zone/home/alice/x" in str(refused.value)


@pytest.mark.parametrize("key", ["a", "a/b/c", "img/.zattrs", "img/s0/0.0.1", "a/..b/c", "img/.z/.zarray"])
def test_a_key_of_plain_names_passes(key):
    assert safe_key(key) and check_key(key, "x") == key


# --- folders and files -------------------------------------------------------------------------

@pytest.fixture
def top():
    """A folder as /tmp holds one: root's, not writable by others."""
    root = Path(tempfile.mkdtemp(prefix="gw-private-", dir="/tmp"))
    try:
        yield root
    finally:
        import shutil
        shutil.rmtree(root, ignore_errors=True)


def test_private_dir_makes_the_missing_folders_private_and_checks_them_again(top):
    cache = top / "scratch" / "bioimage-gateway" / "staging"
    assert private_dir(cache) == cache and not cache.exists()  # nothing to check yet
    private_dir(cache, create=True)
    assert cache.is_dir() and (cache.stat().st_mode & 0o777) == 0o700
    assert private_dir(cache / "entry", create=True) == cache / "entry"


def test_a_link_as_the_folder_itself_is_refused(top):
    (top / "real").mkdir()
    (top / "entry").symlink_to(top / "real")
    with pytest.raises(UntrustedPath, match="is a symbolic link") as refused:
        private_dir(top / "entry")
    assert refused.value.path == str(top / "entry")
    with pytest.raises(UntrustedPath, match="is a symbolic link"):
        own_dir(top / "entry")


def test_a_root_link_above_is_followed_and_its_target_checked(top):
    (top / "real" / "cache").mkdir(parents=True)
    (top / "scratch").symlink_to(top / "real")  # as /scratch -> /gpfs/scratch
    assert private_dir(top / "scratch" / "cache" / "entry", create=True)
    assert (top / "real" / "cache" / "entry").is_dir()
    (top / "real").chmod(0o777)  # the target is held to the same rules
    with pytest.raises(UntrustedPath, match="writable by others and not sticky") as refused:
        private_dir(top / "scratch" / "cache")
    assert refused.value.path == str(top / "real")


def test_a_folder_writable_by_others_is_refused_unless_sticky(top):
    (top / "shared").mkdir()
    (top / "shared").chmod(0o777)
    with pytest.raises(UntrustedPath, match="writable by others and not sticky"):
        private_dir(top / "shared" / "alice", create=True)
    assert not (top / "shared" / "alice").exists()
    (top / "shared").chmod(0o1777)  # as /tmp, /scratch: no one removes what another made
    private_dir(top / "shared" / "alice", create=True)


def test_a_folder_of_another_users_on_the_way_is_refused_naming_the_owner(top):
    (top / "alice").mkdir()
    os.chown(top / "alice", NOBODY, NOBODY)
    with pytest.raises(UntrustedPath, match="belongs to") as refused:
        private_dir(top / "alice" / "cache", create=True)
    assert refused.value.path == str(top / "alice") and refused.value.owner == "nobody"
    assert not (top / "alice" / "cache").exists()


def test_make_folders_never_goes_through_a_link(top):
    (top / "copy").mkdir()
    (top / "outside").mkdir()
    (top / "copy" / "s0").symlink_to(top / "outside")
    with pytest.raises(UntrustedPath, match="is a symbolic link"):
        make_folders(str(top / "copy"), "s0/0/0")
    assert list((top / "outside").iterdir()) == []
    made: set[str] = set()
    assert make_folders(str(top / "copy"), "s1/0/0", made) == str(top / "copy" / "s1" / "0" / "0")
    assert len(made) == 3


def test_open_own_refuses_links_and_other_peoples_files(top):
    (top / "real.json").write_text('{"complete": true}')
    (top / "manifest.json").symlink_to(top / "real.json")
    with pytest.raises(UntrustedPath, match="is a symbolic link"):
        read_own_json(top / "manifest.json")
    (top / "theirs.json").write_text('{"complete": true}')
    os.chown(top / "theirs.json", NOBODY, NOBODY)
    with pytest.raises(UntrustedPath, match="belongs to nobody"):
        read_own_json(top / "theirs.json")
    (top / "open.json").write_text('{"complete": true}')
    (top / "open.json").chmod(0o666)
    with pytest.raises(UntrustedPath, match="writable by others"):
        open_own(top / "open.json", os.O_RDONLY)
    assert read_own_json(top / "real.json") == {"complete": True}
    assert read_own_json(top / "missing.json") is None
