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


def journal_keys(path: Path) -> list[str]:
    """Every key the journal records as verified, in order, once per record (a key recorded twice
    shows twice): object lines ``{"key"...}`` and folder records ``{"dir", "objects"}``; a torn
    last line (a kill mid-write) is left out."""
    import json

    keys: list[str] = []
    if not path.exists():
        return keys
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "key" in record:
            keys.append(record["key"])
        else:
            prefix = f"{record['dir']}/" if record["dir"] else ""
            keys.extend(prefix + name for name, _, _ in record["objects"])
    return keys


def read_with_ome_zarr(path: Path):
    """The image as ome-zarr's reader sees it: its metadata and one numpy array per level."""
    import numpy as np
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    location = parse_url(str(path))
    assert location is not None, f"ome-zarr does not recognise {path}"
    node = list(Reader(location)())[0]
    return node.metadata, [np.asarray(level) for level in node.data]


def read_with_napari_ome_zarr(path: Path):
    """The layers napari-ome-zarr's reader gives napari for ``path`` (no viewer, no Qt):
    ``(numpy arrays per level, layer metadata, layer type)`` per layer."""
    import numpy as np
    from napari_ome_zarr import napari_get_reader

    reader = napari_get_reader(str(path))
    assert reader is not None, f"napari-ome-zarr does not recognise {path}"
    return [([np.asarray(level) for level in data], meta, kind) for data, meta, kind in reader()]


def source_levels(site: Path):
    import zarr

    group = zarr.open_group(str(site / IMAGE_DIR), mode="r")
    return [group[f"s{i}"][:] for i in range(IMAGE["levels"])]


def source_attrs(site: Path) -> dict:
    import json

    return json.loads((site / IMAGE_DIR / ".zattrs").read_text())


def staged_files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}
