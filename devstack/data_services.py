"""The data services of the local stack: iRODS and OMERO stand-ins with sample images.

No iRODS or OMERO server installs from the package registries, so the stack
runs our protocol-level stand-ins (``irods_standin``, ``omero_standin``), which
the real clients (python-irodsclient, the OMERO.web JSON API over HTTP) talk
to over TCP.  ``devstack up`` seeds them with the sample OME-Zarr images of
:mod:`.samples`, owned by the demo users, with REMBI metadata, and one
collection shared with the ``imaging`` group.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

from .irods_standin import IrodsStandin
from .omero_standin import OmeroStandin
from .processes import stop_pid
from .samples import SAMPLES, rembi_avus, seed_irods, write_samples
from .trust import write_user_files

ZONE = "gwZone"
SHARED_GROUP = "imaging"


def _groups(users: list[dict]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for user in users:
        for group in user["groups"]:
            groups.setdefault(group, []).append(user["username"])
    return groups


def _share_with_group(catalogue, collection: str, local_tree: Path, group: str) -> None:
    """Read access for ``group`` on a seeded image collection and everything in it."""
    catalogue.seed_access(collection, group, "read")
    for folder, dirs, files in os.walk(local_tree):
        rel = os.path.relpath(folder, local_tree)
        base = collection if rel == "." else f"{collection}/{rel}"
        if rel != ".":
            catalogue.seed_access(base, group, "read")
        for name in files:
            catalogue.seed_access(f"{base}/{name}", group, "read")


def write_irods_client_config(user: dict, host: str, port: int) -> Path:
    """What `iinit` leaves in a home: irods_environment.json and the scrambled .irodsA,
    so code in the user's session reaches the stand-in with no arguments.  Written as the
    user (``trust.write_user_files``): root never writes through what a user left in a home."""
    from irods.password_obfuscation import encode

    account = pwd.getpwnam(user["username"])
    environment = {"irods_host": host, "irods_port": port, "irods_zone_name": ZONE,
                   "irods_user_name": user["username"],
                   "irods_authentication_scheme": "native"}
    write_user_files(user["username"], {
        ".irods/irods_environment.json": (json.dumps(environment, indent=2) + "\n", 0o600),
        ".irods/.irodsA": (encode(user["password"], uid=account.pw_uid), 0o600),
    })
    return Path(account.pw_dir) / ".irods" / "irods_environment.json"


def start_irods(state_dir: Path, users: list[dict], images: list[Path], host: str) -> IrodsStandin:
    irods = IrodsStandin(
        state_dir / "irods", zone=ZONE,
        users={u["username"]: u["password"] for u in users}, groups=_groups(users),
    )
    irods.host = host
    irods.start()
    catalogue = irods.catalogue()
    embryo, hela, zebrafish = images
    # Each researcher owns data in their home; alice shares one collection with her group.
    seed_irods(catalogue, ZONE, "alice", "lightsheet", embryo, SAMPLES[0].rembi)
    seed_irods(catalogue, ZONE, "bob", "timelapse", hela, SAMPLES[1].rembi)
    shared = seed_irods(catalogue, ZONE, "alice", f"shared-with-{SHARED_GROUP}", zebrafish,
                        SAMPLES[2].rembi)
    catalogue.seed_access(f"/{ZONE}/home/alice/shared-with-{SHARED_GROUP}", SHARED_GROUP, "read")
    _share_with_group(catalogue, shared, zebrafish, SHARED_GROUP)
    for user in users:
        write_irods_client_config(user, irods.host, irods.port)
    return irods


def start_omero(state_dir: Path, users: list[dict], host: str) -> OmeroStandin:
    # OMERO users need a group; the demo's no-group user gets a private one of their own.
    omero_users = [{**u, "groups": list(u["groups"]) or [f"{u['username']}-private"]}
                   for u in users]
    omero = OmeroStandin(state_dir / "omero", users=omero_users)
    omero.host = host
    omero.start()
    store = omero.store()
    try:
        projects: dict[str, int] = {}  # one project per owner, a dataset per sample in it
        for owner, sample in (("alice", SAMPLES[0]), ("alice", SAMPLES[1]), ("bob", SAMPLES[2])):
            if owner not in projects:
                projects[owner] = store.add_project(f"{owner}'s demo project", owner)
            project = projects[owner]
            dataset = store.add_dataset(sample.name, owner, project=project)
            t, c, z, y, x = sample.shape_tczyx
            store.add_image(
                sample.name, owner, dataset=dataset, size=(t, c, z, min(y, 256), min(x, 256)),
                levels=3, chunk=64,
                key_values=[(attr, f"{value} {units}".strip())
                            for attr, value, units in rembi_avus(sample.rembi)],
            )
    finally:
        store.close()
    return omero


def start_data_services(state_dir: Path, users: list[dict], host: str = "127.0.0.1") -> tuple[dict, dict]:
    """Start and seed both stand-ins, listening on ``host``; return (their record for
    devstack.json, their PIDs)."""
    images = write_samples(state_dir / "samples")
    irods = start_irods(state_dir, users, images, host)
    try:
        omero = start_omero(state_dir, users, host)
    except BaseException:
        irods.stop()
        raise
    record = {
        "irods": {"host": irods.host, "port": irods.port, "zone": ZONE,
                  "home": f"irods://{ZONE}/home/{{username}}",
                  "shared": f"irods://{ZONE}/home/alice/shared-with-{SHARED_GROUP}",
                  "kind": "stand-in (native iRODS protocol)"},
        "omero": {"url": omero.url, "kind": "stand-in (OMERO.web JSON API)"},
        "samples": [str(p) for p in images],
    }
    return record, {"irods": irods.pid, "omero": omero.pid}


def stop_data_services(pids: dict) -> None:
    for name in ("irods", "omero"):
        stop_pid(pids.get(name))
