"""A hostile source cannot make staging write outside its entry: names from redirects, listings,
iRODS queries and OME-Zarr metadata are refused with an error naming them and where they came
from, before anything is written (Debian's nginx and the iRODS stand-in play the servers)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from staging_support import ZONE
from zarr_support import ESCAPE, ESCAPE_ENCODINGS, HOSTILE_LISTINGS, HOSTILE_NAMES, PAYLOAD, escaping_location

from bioimage_gateway import staging
from bioimage_gateway.catalogs import InvalidPath, UnsafeName
from bioimage_gateway.catalogs.posix import PosixCatalog

def nothing_in(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("encoding", list(ESCAPE_ENCODINGS))
def test_a_redirect_to_an_encoded_dotdot_path_is_refused_and_nothing_is_written_outside(
        hostile_web, scratch, encoding):
    startup = scratch / "home" / "alice" / ".ipython" / "profile_default" / "startup" / "00-x.py"
    # The server's redirect leads exactly there from any entry of the cache (one level below it).
    assert os.path.relpath(startup, staging.cache_root() / "some-key") == ESCAPE
    location = escaping_location(encoding)
    url = f"{hostile_web.url}/escape/{list(ESCAPE_ENCODINGS).index(encoding)}"

    with pytest.raises(UnsafeName) as refused:
        staging.stage(url)
    assert isinstance(refused.value, InvalidPath)
    message = str(refused.value)
    assert f"refused the redirect of {url} to " in message and location in message
    assert refused.value.name == hostile_web.url + location and refused.value.path == url
    assert not startup.exists() and not (scratch / "home").exists()  # nothing outside the cache
    assert nothing_in(staging.cache_root())  # and nothing in it either


@pytest.mark.parametrize("listing", list(HOSTILE_LISTINGS))
def test_a_listing_with_a_hostile_name_is_refused_naming_it(hostile_web, scratch, listing):
    url = f"{hostile_web.url}/listing/{listing}/"
    with pytest.raises(UnsafeName) as refused:
        staging.stage(url)
    bad = HOSTILE_NAMES[listing]
    assert refused.value.name == bad
    assert repr(bad) in str(refused.value) and f"the listing of {url}" in str(refused.value)
    assert nothing_in(staging.cache_root())
    assert not (scratch / "00-x.py").exists() and not (scratch / "scratch" / "00-x.py").exists()


@pytest.fixture
def image_with_level_path(tmp_path):
    """``(path)`` -> a local OME-Zarr whose only level's ``path`` in ``.zattrs`` is ``path``;
    for an absolute one the level's arrays are also where it leads as a key below the image."""
    from staging_support import IMAGE

    from bioimage_gateway.devstack.samples import write_sample_image

    image = tmp_path / "hostile.ome.zarr"
    write_sample_image(image, **{**IMAGE, "levels": 1})

    def set_path(path: str) -> Path:
        zattrs = json.loads((image / ".zattrs").read_text())
        zattrs["multiscales"][0]["datasets"][0]["path"] = path
        (image / ".zattrs").write_text(json.dumps(zattrs))
        if path.startswith("/"):
            shutil.copytree(image / "s0", image / path.strip("/"))
        return image

    return set_path


@pytest.mark.parametrize("level_path", ["../../x", "/etc", "s0/../../x", ".."])
def test_an_ome_zarr_level_path_leading_out_is_refused_at_plan_time(image_with_level_path, scratch,
                                                                     level_path):
    image = image_with_level_path(level_path)
    with pytest.raises(UnsafeName) as refused:
        staging.plan(PosixCatalog(recognise_images=False), PosixCatalog.url(str(image)))
    assert refused.value.name == level_path
    assert repr(level_path) in str(refused.value) and "level path" in str(refused.value)
    assert str(image / ".zattrs") in str(refused.value)  # where it came from
    with pytest.raises(UnsafeName):
        staging.stage(image)
    assert nothing_in(staging.cache_root())


@pytest.mark.parametrize("hostile", ["collection", "data object"])
def test_an_irods_name_leading_out_of_the_collection_is_refused(irods, scratch, hostile):
    """The catalogue answers a query with a collection ``<base>/../../...`` (which passes the
    walk's prefix test) or a data object named ``../00-x.py``; the real server never would, a
    hostile or damaged one may."""
    name = f"hostile-{hostile.replace(' ', '-')}"
    base = f"/{ZONE}/home/alice/{name}"
    # Names that lead from where they would be staged (<entry>/<name>/sub) to the test's "home".
    target = scratch / "home" / "alice" / ".ipython"
    catalogue = irods.catalogue()
    try:
        catalogue.seed_objects(f"{base}/sub", "alice", [("00-x.py", PAYLOAD.encode())])
        if hostile == "collection":  # <base>/../../..: the walk's rel path leads out
            bad = os.path.relpath(target, staging.cache_root() / "entry" / name)
            catalogue.seed_unchecked_name(f"{base}/sub", bad)
        else:
            bad = os.path.relpath(target / "00-x.py", staging.cache_root() / "entry" / name / "sub")
            catalogue.seed_unchecked_name(f"{base}/sub/00-x.py", bad)
    finally:
        catalogue.close()

    with pytest.raises(UnsafeName) as refused:
        staging.stage(f"irods:/{base}", **irods.credentials)
    assert bad in str(refused.value) and repr(refused.value.name) in str(refused.value)
    assert f"irods:/{base}" in str(refused.value)
    assert nothing_in(staging.cache_root())
    assert not (scratch / "home").exists() and not (scratch / "scratch" / "home").exists()
