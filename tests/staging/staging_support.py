"""Helpers for the staging tests: the sample image, seeding an iRODS stand-in with it, counters."""

from __future__ import annotations

import sys
from pathlib import Path

CATALOG_TESTS = Path(__file__).parent.parent / "catalogs"
sys.path.insert(0, str(CATALOG_TESTS))

from irods_support import USERS, ZONE, start_standin, stop_standin  # noqa: E402,F401

# tczyx with one channel and one timepoint per chunk, odd sizes (partial edge chunks), 3 levels.
IMAGE = dict(name="staging-embryo", shape_tczyx=(3, 2, 4, 70, 90), levels=3,
             channel_names=["nuclei", "membrane"], chunks=(1, 1, 2, 32, 32), seed=11,
             pixel_size_um=(2.0, 0.5, 0.5))
IMAGE_DIR = "embryo.ome.zarr"


def seeded(site: Path, **options):
    from bioimage_gateway.devstack.samples import seed_irods

    standin = start_standin(**options)
    catalogue = standin.catalogue()
    image = seed_irods(catalogue, ZONE, "alice", "images", site / IMAGE_DIR)
    catalogue.seed_objects(f"/{ZONE}/home/alice/plain", "alice",
                           [("notes.txt", (site / "plain" / "notes.txt").read_bytes())])
    catalogue.close()
    standin.image_url = f"irods:/{image}"
    standin.image_path = image
    standin.credentials = dict(host=standin.host, port=standin.port, user="alice", zone=ZONE,
                               password=USERS["alice"])
    return standin


def opens(standin) -> int:
    """DATA_OBJ_OPEN requests the stand-in answered so far (one per object read)."""
    return standin.status()["by_api"].get("DATA_OBJ_OPEN_AN", 0)
