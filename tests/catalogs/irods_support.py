"""Helpers for the catalog tests: the iRODS stand-in's users, how to start, seed and stop one."""

from __future__ import annotations

import base64
import hashlib
import random
import shutil
import tempfile
from pathlib import Path

from irods.access import iRODSAccess
from irods.session import iRODSSession

from bioimage_gateway.devstack.irods_standin import IrodsStandin

ZONE = "testZone"
USERS = {"alice": "alice-secret", "bob": "bob-secret"}
BIG = 3000  # objects in alice's "plates" collection

RAW = random.Random(4).randbytes(200_000)  # a data object's content
UNICODE_NAME = "Zellkern ü #1 & 10% ✓.tif"
NOTES = "Light-sheet run 3, ščť ✓\n".encode() * 10


def home(user: str) -> str:
    return f"/{ZONE}/home/{user}"


def client(standin: IrodsStandin, user: str) -> iRODSSession:
    """The real python-irodsclient, as a user."""
    return iRODSSession(host=standin.host, port=standin.port, user=user, zone=ZONE, password=USERS[user])


def start_standin(**options) -> IrodsStandin:
    state = Path(tempfile.mkdtemp(prefix="irods-standin-", dir="/tmp"))
    standin = IrodsStandin(state, zone=ZONE, users=USERS, groups={"lab": ["alice", "bob"]}, **options)
    return standin.start()


def stop_standin(standin: IrodsStandin) -> None:
    pid = standin.pid
    standin.stop()
    assert pid and not standin.running, f"stand-in pid {pid} still running"
    shutil.rmtree(standin.state_dir, ignore_errors=True)


def seed(standin: IrodsStandin) -> None:
    with client(standin, "alice") as s:
        s.collections.create(f"{home('alice')}/study1")
        s.collections.create(f"{home('alice')}/study2")
        with s.data_objects.open(f"{home('alice')}/study1/raw.tif", "w") as f:
            f.write(RAW)
        with s.data_objects.open(f"{home('alice')}/study1/notes.txt", "w") as f:
            f.write(NOTES)
        with s.data_objects.open(f"{home('alice')}/study2/cells.tif", "w") as f:
            f.write(b"II*\0" + bytes(1000))
        coll = s.collections.get(f"{home('alice')}/study1")
        coll.metadata.add("organism", "Mus musculus")
        coll.metadata.add("modality", "light-sheet")
        raw = s.data_objects.get(f"{home('alice')}/study1/raw.tif")
        raw.metadata.add("organism", "Mus musculus")
        raw.metadata.add("modality", "light-sheet")
        raw.metadata.add("voxel_size", "0.5", "um")
        raw.metadata.add("voxel_size", "2.0", "um")
        raw.chksum()  # registered, as after `iput -K`
        s.collections.create(f"{home('alice')}/unicode")
        with s.data_objects.open(f"{home('alice')}/unicode/{UNICODE_NAME}", "w") as f:
            f.write(b"nucleus")
        cells = s.data_objects.get(f"{home('alice')}/study2/cells.tif")
        cells.metadata.add("organism", "Homo sapiens")
        cells.metadata.add("modality", "light-sheet")
    with client(standin, "bob") as s:
        s.collections.create(f"{home('bob')}/private")
        with s.data_objects.open(f"{home('bob')}/private/secret.tif", "w") as f:
            f.write(b"bob's data")
        s.data_objects.get(f"{home('bob')}/private/secret.tif").metadata.add("organism", "Mus musculus")
        s.collections.create(f"{home('bob')}/shared")
        with s.data_objects.open(f"{home('bob')}/shared/for-lab.txt", "w") as f:
            f.write(b"shared with the lab")
        s.acls.set(iRODSAccess("read", f"{home('bob')}/shared", "lab", ZONE), recursive=True)
        s.acls.set(iRODSAccess("read", home("bob"), "lab", ZONE))
    cat = standin.catalogue()
    cat.seed_objects(f"{home('alice')}/plates", "alice",
                     ((f"well-{i:05d}.zarr.json", f"{{\"well\": {i}}}".encode()) for i in range(BIG)))
    cat.close()


def sha2_of(content: bytes) -> str:
    """iRODS's SHA-256 checksum form, computed here independently."""
    return "sha2:" + base64.b64encode(hashlib.sha256(content).digest()).decode()


def seed_small(standin: IrodsStandin, count: int) -> None:
    """alice's collection "many" with ``count`` small objects, through the seeding API."""
    cat = standin.catalogue()
    cat.seed_objects(f"{home('alice')}/many", "alice",
                     ((f"item-{i:04d}", str(i).encode()) for i in range(count)))
    cat.close()
