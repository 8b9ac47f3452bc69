"""Helpers for the OMERO catalog tests: the OMERO.web stand-in's users, how to start, seed and stop one."""

from __future__ import annotations

import shutil
import struct
import tempfile
import zlib
from pathlib import Path

from bioimage_gateway.devstack.omero_standin import OmeroStandin, pixel

OMERO_USERS = {"alice": "alice-omero", "bob": "bob-omero"}
# "lab" is read-only (rwr---): members see each other's data; "imaging" is private (rw----):
# members see only their own.
GROUPS = {"lab": "rwr---", "imaging": "rw----", "bob-only": "rwr---"}
MEMBERS = {"alice": ["lab", "imaging"], "bob": ["lab", "imaging", "bob-only"]}
MANY = 450  # images in alice's dataset "many"
SIZE = (2, 2, 3, 48, 64)  # T, C, Z, Y, X of the OME-Zarr images

MOUSE = [("organism", "Mus musculus"), ("modality", "light-sheet"), ("rembi:biosample.strain", "C57BL/6"),
         ("rembi:image_acquisition.objective", "20x/1.0 W"), ("channel", "GFP"), ("channel", "DAPI")]


def start_omero(**options) -> OmeroStandin:
    state = Path(tempfile.mkdtemp(prefix="omero-standin-", dir="/tmp"))
    users = [{"username": u, "password": p, "groups": MEMBERS[u]} for u, p in OMERO_USERS.items()]
    return OmeroStandin(state, users=users, groups=GROUPS, **options).start()


def stop_omero(standin: OmeroStandin) -> None:
    pid = standin.pid
    standin.stop()
    assert pid and not standin.running, f"stand-in pid {pid} still running"
    shutil.rmtree(standin.state_dir, ignore_errors=True)


def seed_omero(standin: OmeroStandin, many: int = MANY) -> dict[str, int]:
    """Seed alice's and bob's data; the ids by name."""
    s = standin.store()
    ids = {}
    ids["embryo"] = s.add_project("Embryo study", "alice", group="lab",
                                  key_values=[("rembi:study.title", "Mouse embryo atlas")])
    ids["day1"] = s.add_dataset("Light-sheet day 1", "alice", project=ids["embryo"],
                                key_values=[("modality", "light-sheet")])
    ids["confocal"] = s.add_dataset("Confocal", "alice", project=ids["embryo"])
    ids["embryo1"] = s.add_image("embryo-1.ome.zarr", "alice", dataset=ids["day1"], size=SIZE, levels=2,
                                 chunk=32, key_values=MOUSE)
    ids["embryo2"] = s.add_image("embryo-2.ome.zarr", "alice", dataset=ids["day1"], size=(1, 1, 1, 32, 32),
                                 levels=1, key_values=[("organism", "Mus musculus"), ("modality", "confocal")])
    ids["cells"] = s.add_image("HeLa cells", "alice", dataset=ids["confocal"], size=(1, 1, 1, 16, 16), levels=1,
                               key_values=[("organism", "Homo sapiens"), ("modality", "confocal")])
    ids["loose"] = s.add_image("loose image", "alice", group="lab", size=(1, 1, 1, 8, 8), levels=1)
    ids["big"] = s.add_project("Big", "alice", group="lab")
    ids["many"] = s.add_dataset("many", "alice", project=ids["big"])
    for i in range(many):
        s.add_image(f"img-{i:04d}", "alice", dataset=ids["many"], zarr=False)
    ids["screen"] = s.add_screen("Screen A", "alice", group="lab")
    ids["plate"] = s.add_plate("Plate 1", "alice", screen=ids["screen"])
    ids["well_a1"] = s.add_image("A1", "alice", plate=ids["plate"], well=(0, 0), group="lab", size=(1, 1, 1, 8, 8),
                                 levels=1, key_values=[("compound", "DMSO")])
    ids["well_a2"] = s.add_image("A2", "alice", plate=ids["plate"], well=(0, 1), group="lab", size=(1, 1, 1, 8, 8),
                                 levels=1, key_values=[("compound", "taxol")])
    # bob: a project shared with the lab, an image in the private group "imaging", a group alice is not in
    ids["bob_shared_project"] = s.add_project("Bob shared", "bob", group="lab")
    ids["bob_shared_ds"] = s.add_dataset("bob's lab dataset", "bob", project=ids["bob_shared_project"])
    ids["bob_shared"] = s.add_image("bob-mouse", "bob", dataset=ids["bob_shared_ds"], size=(1, 1, 1, 16, 16),
                                    levels=1, key_values=[("organism", "Mus musculus"), ("modality", "light-sheet")])
    ids["bob_private_ds"] = s.add_dataset("bob private", "bob", group="imaging")
    ids["bob_private"] = s.add_image("bob-secret", "bob", dataset=ids["bob_private_ds"], size=(1, 1, 1, 16, 16),
                                     levels=1, key_values=[("organism", "Mus musculus"), ("modality", "light-sheet")])
    ids["bob_only_group"] = s.group_id("bob-only")
    ids["lab_group"] = s.group_id("lab")
    s.close()
    return ids


def expected_plane(t: int, c: int, z: int, height: int, width: int, step: int = 1) -> list[list[int]]:
    """The pixels the stand-in generated, recomputed here (``step`` 2 for resolution level 1)."""
    return [[pixel(t, c, z, y * step, x * step) for x in range(width)] for y in range(height)]


def decode_grey_png(data: bytes) -> tuple[int, int, list[list[int]]]:
    """(width, height, rows) of an 8-bit greyscale PNG (filter type 0 rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 0)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    rows = []
    for r in range(height):
        line = raw[r * (width + 1):(r + 1) * (width + 1)]
        assert line[0] == 0
        rows.append(list(line[1:]))
    return width, height, rows
