"""``bioimage-gateway stage|evict|publish``: the installed command run as a subprocess against the
iRODS stand-in, with the credentials an ``iinit`` leaves (irods_environment.json and .irodsA):
what it prints, its exit codes, and one clear line on stderr for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from irods.password_obfuscation import encode as scramble
from staging_support import IMAGE_DIR, USERS, ZONE, read_with_ome_zarr, source_levels, staged_files

from bioimage_gateway import staging

CLI = str(Path(sys.executable).parent / "bioimage-gateway")


@pytest.fixture
def env(irods, scratch, tmp_path):
    """alice's environment: iRODS client files as `iinit` leaves them, the test's scratch."""
    folder = tmp_path / ".irods"
    folder.mkdir(mode=0o700)
    (folder / "irods_environment.json").write_text(json.dumps(irods.environment("alice")))
    (folder / ".irodsA").write_text(scramble(USERS["alice"]))
    return {**os.environ, "IRODS_ENVIRONMENT_FILE": str(folder / "irods_environment.json"),
            "IRODS_AUTHENTICATION_FILE": str(folder / ".irodsA")}


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=180)


def one_clear_line(result: subprocess.CompletedProcess, code: int, *expected: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert result.stdout == ""


def test_stage_prints_the_path_of_the_selection_and_status_and_evict_find_it(irods, site, env):
    url = irods.image_url
    result = cli(env, "stage", url, "--levels", "0,2", "--channels", "membrane", "--timepoints", "1:3")
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert result.stdout == f"{path}\n" and path.name == IMAGE_DIR
    assert path.parent.parent == staging.cache_root()
    metadata, levels = read_with_ome_zarr(path)
    source = source_levels(site)
    assert metadata["channel_names"] == ["membrane"]
    assert np.array_equal(levels[0], source[0][1:3, 1:2]) and np.array_equal(levels[1], source[2][1:3, 1:2])

    # the same selection again: the same path, from the cache, without a request to iRODS
    before = irods.status()["requests"]
    again = cli(env, "stage", url, "--levels", "0,2", "--channels", "membrane", "--timepoints", "1:3")
    assert again.returncode == 0 and again.stdout == result.stdout
    assert irods.status()["requests"] == before

    listing = cli(env, "stage", "--status")
    assert listing.returncode == 0, listing.stderr
    line, = listing.stdout.splitlines()
    assert " complete " in line and url in line and str(path) in line
    one = cli(env, "stage", "--status", str(path))
    assert one.returncode == 0 and one.stdout == listing.stdout

    evicted = cli(env, "evict", url)
    assert evicted.returncode == 0 and evicted.stdout == f"removed {path.parent}\n"
    assert not path.exists()
    one_clear_line(cli(env, "evict", url), 1, f"nothing staged for {url}")
    one_clear_line(cli(env, "stage", "--status", url), 1, f"nothing staged for {url}")
    empty = cli(env, "stage", "--status")
    assert empty.returncode == 0 and empty.stdout == "" and "nothing staged" in empty.stderr


def test_stage_into_a_destination_leaves_the_cache_alone(irods, site, env, tmp_path):
    result = cli(env, "stage", irods.image_url, "--levels", "s2", "--dest", str(tmp_path / "mine"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'mine' / IMAGE_DIR}\n"
    _, levels = read_with_ome_zarr(tmp_path / "mine" / IMAGE_DIR)
    assert len(levels) == 1 and np.array_equal(levels[0], source_levels(site)[2])
    assert not staging.cache_root().exists() or not any(staging.cache_root().iterdir())
    status = cli(env, "stage", "--status", str(tmp_path / "mine" / IMAGE_DIR))
    assert status.returncode == 0 and " complete " in status.stdout


def test_bad_input_gets_one_clear_line_and_nothing_is_staged(irods, site, env):
    url = irods.image_url
    one_clear_line(cli(env, "stage", url, "--channels", "GFP"), 1, "no channel named 'GFP'", "nuclei")
    one_clear_line(cli(env, "stage", url, "--levels", "7"), 1, "level 7 is outside")
    one_clear_line(cli(env, "stage", url, "--timepoints", "soon"), 1, "timepoints 'soon'", "A:B")
    one_clear_line(cli(env, "stage", url, "--timepoints", "2:9"), 1, "timepoint range 2:9")
    missing = f"irods://{ZONE}/home/alice/images/nothing-here.ome.zarr"
    one_clear_line(cli(env, "stage", missing), 1, "nothing-here.ome.zarr")
    one_clear_line(cli(env, "stage", f"file://{site}/plain", "--channels", "0"), 1, "not an OME-Zarr image")
    one_clear_line(cli(env, "stage"), 2, "a URL is needed")
    one_clear_line(cli(env, "stage", "--status", "--levels", "1"), 2, "--status takes only")
    # a wrong password in .irodsA: refused, said so
    (Path(env["IRODS_AUTHENTICATION_FILE"])).write_text(scramble("not-her-password"))
    one_clear_line(cli(env, "stage", url), 1, "iRODS refused the credentials")
    assert not staging.cache_root().exists() or staging.status() == []


def test_publish_uploads_with_provenance_and_refuses_to_overwrite(irods, site, env, tmp_path):
    from irods.models import Collection, CollectionMeta
    from irods.session import iRODSSession

    staged = cli(env, "stage", irods.image_url, "--levels", "s1", "--dest", str(tmp_path / "in"))
    assert staged.returncode == 0, staged.stderr
    local = Path(staged.stdout.strip())
    target = f"irods://{ZONE}/home/alice/results/cli.ome.zarr"

    published = cli(env, "publish", str(local), target)
    assert published.returncode == 0, published.stderr
    assert published.stdout == f"{target}\n"
    with iRODSSession(**irods.credentials) as session:
        coll = f"/{ZONE}/home/alice/results/cli.ome.zarr"
        avus = {row[CollectionMeta.name]: row[CollectionMeta.value] for row in
                session.query(CollectionMeta.name, CollectionMeta.value).filter(Collection.name == coll)}
    assert avus["prov:wasDerivedFrom"] == irods.image_url
    assert avus["rembi:analysed_data.type"] == "OME-Zarr image"
    back = staging.stage(target, dest=tmp_path / "back", **irods.credentials)
    assert staged_files(back) == staged_files(local)

    one_clear_line(cli(env, "publish", str(local), target), 1, f"{target} exists already", "--overwrite")
    replaced = cli(env, "publish", "--overwrite", str(local), target)
    assert replaced.returncode == 0 and replaced.stdout == f"{target}\n", replaced.stderr
    one_clear_line(cli(env, "publish", str(tmp_path / "nothing"), target), 1, "nothing to publish at")
    one_clear_line(cli(env, "publish", str(local), "https://example.org/x"), 1, "publish writes to iRODS")
    one_clear_line(cli(env, "publish", str(local), f"irods://{ZONE}/home/alice/../bob/x"), 1, "..")
