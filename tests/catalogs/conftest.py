"""Fixtures: an iRODS stand-in (a subprocess on 127.0.0.1, state in a temp dir, stopped by PID),
seeded through the real python-irodsclient where it matters and through the seeding API for bulk."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from irods_support import USERS, ZONE, seed, start_standin, stop_standin  # noqa: E402

from bioimage_gateway.catalogs import IrodsCatalog  # noqa: E402


@pytest.fixture(scope="session")
def irods():
    """One stand-in for the session, seeded; stopped by PID at the end."""
    standin = start_standin()
    try:
        seed(standin)
        yield standin
    finally:
        stop_standin(standin)


@pytest.fixture
def alice(irods):
    catalog = IrodsCatalog(irods.host, irods.port, "alice", ZONE, USERS["alice"])
    yield catalog
    catalog.close()


@pytest.fixture
def requests_made(irods):
    """A function giving the number of API requests the stand-in answered so far (all, or one API)."""
    def count(api: str | None = None) -> int:
        status = irods.status()
        return status["requests"] if api is None else status["by_api"].get(api, 0)
    return count


# --- OMERO: an OMERO.web stand-in (a subprocess on 127.0.0.1, state in a temp dir, stopped by PID) ---

from omero_support import OMERO_USERS, seed_omero, start_omero, stop_omero  # noqa: E402


@pytest.fixture(scope="session")
def omero():
    """One seeded OMERO.web stand-in for the session; ``omero.ids`` names the seeded objects."""
    standin = start_omero()
    try:
        standin.ids = seed_omero(standin)
        yield standin
    finally:
        stop_omero(standin)


@pytest.fixture
def omero_alice(omero):
    from bioimage_gateway.catalogs.omero import OmeroCatalog
    catalog = OmeroCatalog(omero.url, "alice", OMERO_USERS["alice"])
    yield catalog
    catalog.close()


@pytest.fixture
def omero_requests(omero):
    """A function giving how many requests the OMERO stand-in answered so far (all, or to one path
    pattern such as ``/api/v0/m/datasets/{id}/images/``)."""
    def count(path: str | None = None) -> int:
        status = omero.status()
        return status["requests"] if path is None else status["by_path"].get(path, 0)
    return count


# --- POSIX, HTTP and OME-Zarr access (appended) -------------------------------------------------

@pytest.fixture(scope="session")
def site():
    """A directory tree with test files and a small OME-Zarr image (``zarr_support.IMAGE``),
    readable by nginx's workers; removed at the end."""
    import os
    import shutil
    import tempfile

    from zarr_support import IMAGE, IMAGE_DIR, make_tree

    from bioimage_gateway.devstack.samples import write_sample_image

    root = Path(tempfile.mkdtemp(prefix="gw-site-", dir="/tmp"))
    try:
        make_tree(root)
        (root / "images").mkdir(mode=0o755)
        write_sample_image(root / "images" / IMAGE_DIR, **IMAGE)
        for folder, _, files in os.walk(root / "images"):
            Path(folder).chmod(0o755)
            for name in files:
                Path(folder, name).chmod(0o644)
        root.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def nginx(site):
    """Debian's nginx serving ``site`` on loopback (JSON autoindex); stopped by PID at the end."""
    from zarr_support import nginx_serving

    with nginx_serving(site) as server:
        yield server


@pytest.fixture(scope="session")
def irods_images(site):
    """An iRODS stand-in of its own with the test image (``zarr_support.IMAGE``) put in by
    ``samples.seed_irods``: in alice's "images" collection with REMBI AVUs (``.image``), a copy
    in bob's private collection (``.private``), and alice's empty "images/plain"; stopped by PID."""
    from zarr_support import IMAGE, IMAGE_DIR

    from bioimage_gateway.devstack.samples import seed_irods

    standin = start_standin()
    try:
        catalogue = standin.catalogue()
        image = seed_irods(catalogue, ZONE, "alice", "images", site / "images" / IMAGE_DIR, IMAGE["rembi"])
        private = seed_irods(catalogue, ZONE, "bob", f"/{ZONE}/home/bob/private", site / "images" / IMAGE_DIR)
        catalogue.seed_collection(f"/{ZONE}/home/alice/images/plain", "alice")
        catalogue.close()
        standin.image, standin.private = f"irods:/{image}", f"irods:/{private}"
        yield standin
    finally:
        stop_standin(standin)


@pytest.fixture(scope="session")
def hostile_web():
    """Debian's nginx as a hostile server (``zarr_support.HostileNginx``); stopped by PID."""
    import os
    import shutil
    import tempfile

    from zarr_support import HostileNginx, nginx_serving

    root = Path(tempfile.mkdtemp(prefix="gw-hostile-site-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        with nginx_serving(root, HostileNginx) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)
