"""The local stack's data services: seeded stand-ins, reached through the real clients."""

from __future__ import annotations

import sys

import pytest

from bioimage_gateway.catalogs import PermissionDenied, open_catalog
from bioimage_gateway.catalogs.rembi import to_rembi
from bioimage_gateway.catalogs.zarr import is_ome_zarr
from bioimage_gateway.devstack.processes import run


@pytest.fixture(scope="module")
def services(devstack):
    return devstack.record()["data_services"]


def irods_as(services, username: str):
    irods = services["irods"]
    return open_catalog(f"irods://{irods['zone']}/", host=irods["host"], port=irods["port"],
                        user=username, zone=irods["zone"], password=f"{username}-demo")


def test_devstack_json_lists_both_stand_ins(devstack, services):
    record = devstack.record()
    assert {"irods", "omero"} <= set(record["pids"])
    # On the service host's cluster address, where sessions on the compute nodes reach them.
    service = record["network"]["service_address"]
    assert services["irods"]["host"] == service and services["irods"]["port"]
    assert services["omero"]["url"].startswith(f"http://{service}:")


def test_each_researcher_finds_their_images_with_rembi_metadata(services):
    catalog = irods_as(services, "alice")
    zone = services["irods"]["zone"]
    image = f"irods://{zone}/home/alice/lightsheet/mouse-embryo-lightsheet.ome.zarr"
    names = [e.name for e in catalog.list(f"irods://{zone}/home/alice/lightsheet")]
    assert names == ["mouse-embryo-lightsheet.ome.zarr"]
    assert is_ome_zarr(catalog, image)
    rembi = to_rembi(catalog.metadata(image))
    assert rembi["biosample"]["organism"] == "Mus musculus"
    assert rembi["image_acquisition"]["modality"] == "light-sheet"


def test_shared_collection_is_readable_by_the_group_only(services):
    shared = services["irods"]["shared"]
    bob = irods_as(services, "bob")  # imaging, like alice
    assert [e.name for e in bob.list(shared)] == ["zebrafish-section.ome.zarr"]
    eve = irods_as(services, "eve")  # in no group
    with pytest.raises(PermissionDenied):
        list(eve.list(shared))


def test_omero_projects_belong_to_their_owners(services):
    host = services["omero"]["url"].removeprefix("http://")
    alice = open_catalog(f"omero://{host}/", url=services["omero"]["url"],
                         username="alice", password="alice-demo")
    projects = [e.name for e in alice.list(f"omero://{host}/")]
    assert "alice's demo project" in projects


def test_demo_users_reach_irods_from_their_session_without_arguments(devstack, services):
    """devstack up leaves what `iinit` would: the client finds the stand-in on its own."""
    program = ("from bioimage_gateway.catalogs.irods import IrodsCatalog; "
               "c = IrodsCatalog(); print(c.user, [e.name for e in c.list("
               f"'irods://{services['irods']['zone']}/home/bob/timelapse')])")
    result = run(["sudo", "-u", "bob", "-H", sys.executable, "-c", program], check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["bob", "['hela-cells-timelapse.ome.zarr']"]
