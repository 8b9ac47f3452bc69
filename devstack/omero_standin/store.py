"""The OMERO stand-in's state: an SQLite database shaped after the few OMERO model tables the
JSON API exposes, and a folder of OME-Zarr images (``images/<id>.ome.zarr``).

This is also the seeding API (``Store.add_project``, ``add_dataset``, ``add_image``, ``add_screen``,
``add_plate``, ``annotate``, ``create_session``), used by tests and the demo stack to fill a
stand-in without going through HTTP (OMERO.web's JSON API is read-mostly).

Permissions follow OMERO's group permission levels: ``rw----`` (private: members see only their
own data), ``rwr---`` (read-only), ``rwra--`` (read-annotate), ``rwrw--`` (read-write). A user
sees what they own and, in a group they belong to that is not private, what other members own.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import struct
import threading
import zlib
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS experimenter (id INTEGER PRIMARY KEY, username TEXT UNIQUE, password TEXT,
    first_name TEXT, last_name TEXT, default_group INTEGER);
CREATE TABLE IF NOT EXISTS grp (id INTEGER PRIMARY KEY, name TEXT UNIQUE, perms TEXT);
CREATE TABLE IF NOT EXISTS member (user_id INTEGER, group_id INTEGER, PRIMARY KEY (user_id, group_id));
CREATE TABLE IF NOT EXISTS obj (type TEXT, id INTEGER, name TEXT, description TEXT, owner_id INTEGER,
    group_id INTEGER, created REAL, extra TEXT, PRIMARY KEY (type, id));
CREATE TABLE IF NOT EXISTS link (parent_type TEXT, parent_id INTEGER, child_type TEXT, child_id INTEGER,
    extra TEXT, PRIMARY KEY (parent_type, parent_id, child_type, child_id));
CREATE TABLE IF NOT EXISTS mapann (id INTEGER PRIMARY KEY, parent_type TEXT, parent_id INTEGER,
    owner_id INTEGER, group_id INTEGER, ns TEXT, kv TEXT, created REAL);
CREATE TABLE IF NOT EXISTS omero_session (uuid TEXT PRIMARY KEY, user_id INTEGER, group_id INTEGER);
CREATE TABLE IF NOT EXISTS web_session (sid TEXT PRIMARY KEY, omero_uuid TEXT);
"""

TYPES = ("Project", "Dataset", "Image", "Screen", "Plate")
PERMISSION_LEVELS = ("rw----", "rwr---", "rwra--", "rwrw--")
MAP_NS = "openmicroscopy.org/omero/client/mapAnnotation"


def pixel(t: int, c: int, z: int, y: int, x: int) -> int:
    """The value the stand-in gives every generated image at (t, c, z, y, x) of its full
    resolution (uint8): a pattern a reader can recompute to check what it read."""
    return (x + 2 * y + 40 * c + 17 * t + 7 * z) % 256


class Store:
    def __init__(self, state_dir: Path | str):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "images").mkdir(exist_ok=True)
        self.db = sqlite3.connect(self.state_dir / "omero.sqlite3", check_same_thread=False,
                                  isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()

    def close(self) -> None:
        self.db.close()

    def q(self, sql: str, *args) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def one(self, sql: str, *args):
        rows = self.q(sql, *args)
        return rows[0] if rows else None

    # --- users and groups ----------------------------------------------------------------------

    def initialise(self, users: list[dict], groups: dict[str, str] | None = None) -> None:
        """Create (or update) groups ``{name: permissions}`` and users
        ``[{"username", "password", "groups": [names], "first_name"?, "last_name"?}]``; a user's
        first group is their default group. Groups named only by users get ``rwr---``."""
        groups = dict(groups or {})
        for user in users:
            for name in user.get("groups", []):
                groups.setdefault(name, "rwr---")
        for name, perms in groups.items():
            self.add_group(name, perms)
        for user in users:
            self.add_user(user["username"], user["password"], user.get("groups", []),
                          user.get("first_name"), user.get("last_name"))

    def add_group(self, name: str, perms: str = "rwr---") -> int:
        if perms not in PERMISSION_LEVELS:
            raise ValueError(f"permissions must be one of {PERMISSION_LEVELS}, not {perms!r}")
        row = self.one("SELECT id FROM grp WHERE name = ?", name)
        if row:
            self.q("UPDATE grp SET perms = ? WHERE id = ?", perms, row["id"])
            return row["id"]
        # ids 0 and 1 are OMERO's "system" and "user" groups
        gid = max(2, (self.one("SELECT max(id) AS m FROM grp")["m"] or 0) + 1)
        self.q("INSERT INTO grp VALUES (?, ?, ?)", gid, name, perms)
        return gid

    def add_user(self, username: str, password: str, groups: list[str], first_name=None,
                 last_name=None) -> int:
        gids = [self.group_id(g) for g in groups]
        row = self.one("SELECT id FROM experimenter WHERE username = ?", username)
        if row:
            uid = row["id"]
            self.q("UPDATE experimenter SET password = ? WHERE id = ?", password, uid)
        else:
            uid = max(2, (self.one("SELECT max(id) AS m FROM experimenter")["m"] or 0) + 1)
            self.q("INSERT INTO experimenter VALUES (?, ?, ?, ?, ?, ?)", uid, username, password,
                   first_name or username.capitalize(), last_name or "Demo", gids[0] if gids else None)
        for gid in gids:
            self.q("INSERT OR IGNORE INTO member VALUES (?, ?)", uid, gid)
        return uid

    def group_id(self, name: str) -> int:
        row = self.one("SELECT id FROM grp WHERE name = ?", name)
        if not row:
            raise KeyError(f"no group {name!r}")
        return row["id"]

    def user(self, username: str) -> sqlite3.Row:
        row = self.one("SELECT * FROM experimenter WHERE username = ?", username)
        if not row:
            raise KeyError(f"no user {username!r}")
        return row

    def user_by_id(self, uid: int) -> sqlite3.Row | None:
        return self.one("SELECT * FROM experimenter WHERE id = ?", uid)

    def group(self, gid: int) -> sqlite3.Row | None:
        return self.one("SELECT * FROM grp WHERE id = ?", gid)

    def groups_of(self, uid: int) -> list[int]:
        return [r["group_id"] for r in self.q("SELECT group_id FROM member WHERE user_id = ? "
                                              "ORDER BY group_id", uid)]

    # --- sessions ------------------------------------------------------------------------------

    def create_session(self, username: str) -> str:
        """A new OMERO session for ``username``; its key (UUID) is what ``bsession=`` joins."""
        user = self.user(username)
        uuid = _uuid()
        self.q("INSERT INTO omero_session VALUES (?, ?, ?)", uuid, user["id"], user["default_group"])
        return uuid

    # --- objects -------------------------------------------------------------------------------

    def _owner_group(self, owner: str, group: str | None) -> tuple[int, int]:
        user = self.user(owner)
        gid = self.group_id(group) if group else user["default_group"]
        if gid not in self.groups_of(user["id"]):
            raise ValueError(f"{owner} is not a member of group {group}")
        return user["id"], gid

    def _add(self, type_: str, name: str, owner: str, group: str | None, description: str = "",
             extra: dict | None = None) -> int:
        uid, gid = self._owner_group(owner, group)
        with self.lock:
            oid = (self.one("SELECT max(id) AS m FROM obj WHERE type = ?", type_)["m"] or 0) + 1
            self.q("INSERT INTO obj VALUES (?, ?, ?, ?, ?, ?, julianday('now'), ?)", type_, oid, name,
                   description, uid, gid, json.dumps(extra or {}))
        return oid

    def link(self, parent_type: str, parent_id: int, child_type: str, child_id: int,
             extra: dict | None = None) -> None:
        self.q("INSERT OR IGNORE INTO link VALUES (?, ?, ?, ?, ?)", parent_type, parent_id, child_type,
               child_id, json.dumps(extra or {}))

    def add_project(self, name: str, owner: str, group: str | None = None, description: str = "",
                    key_values=None) -> int:
        pid = self._add("Project", name, owner, group, description)
        if key_values:
            self.annotate("Project", pid, key_values)
        return pid

    def add_dataset(self, name: str, owner: str, project: int | None = None, group: str | None = None,
                    description: str = "", key_values=None) -> int:
        did = self._add("Dataset", name, owner, group, description)
        if project is not None:
            self.link("Project", project, "Dataset", did)
        if key_values:
            self.annotate("Dataset", did, key_values)
        return did

    def add_screen(self, name: str, owner: str, group: str | None = None, description: str = "",
                   key_values=None) -> int:
        sid = self._add("Screen", name, owner, group, description)
        if key_values:
            self.annotate("Screen", sid, key_values)
        return sid

    def add_plate(self, name: str, owner: str, screen: int | None = None, group: str | None = None,
                  rows: int = 2, columns: int = 3, key_values=None) -> int:
        pid = self._add("Plate", name, owner, group, extra={"rows": rows, "columns": columns})
        if screen is not None:
            self.link("Screen", screen, "Plate", pid)
        if key_values:
            self.annotate("Plate", pid, key_values)
        return pid

    def add_image(self, name: str, owner: str, dataset: int | None = None, group: str | None = None,
                  size: tuple[int, int, int, int, int] = (1, 1, 1, 64, 64), levels: int = 2,
                  chunk: int = 32, physical_size: float = 0.5, key_values=None,
                  plate: int | None = None, well: tuple[int, int] | None = None,
                  zarr: bool = True) -> int:
        """An image of ``size`` (T, C, Z, Y, X) uint8 pixels (``pixel()``), stored as an OME-Zarr
        (NGFF 0.4, ``levels`` resolutions, each half the previous in X and Y) unless ``zarr`` is false."""
        if group is None and dataset is not None:
            group_row = self.one("SELECT group_id FROM obj WHERE type = 'Dataset' AND id = ?", dataset)
            group = self.group(group_row["group_id"])["name"] if group_row else None
        t, c, z, y, x = size
        extra = {"size": [t, c, z, y, x], "levels": levels, "physical_size": physical_size,
                 "zarr": bool(zarr)}
        iid = self._add("Image", name, owner, group, extra=extra)
        if dataset is not None:
            self.link("Dataset", dataset, "Image", iid)
        if plate is not None:
            row, column = well or (0, 0)
            self.link("Plate", plate, "Image", iid, {"row": row, "column": column})
        if zarr:
            write_ome_zarr(self.zarr_dir(iid), name, size, levels, chunk, physical_size)
        if key_values:
            self.annotate("Image", iid, key_values)
        return iid

    def zarr_dir(self, image_id: int) -> Path:
        return self.state_dir / "images" / f"{image_id}.ome.zarr"

    def annotate(self, type_: str, oid: int, key_values, owner: str | None = None,
                 ns: str = MAP_NS) -> int:
        """A map annotation (list of (key, value) pairs, keys may repeat) linked to an object."""
        row = self.one("SELECT owner_id, group_id FROM obj WHERE type = ? AND id = ?", type_, oid)
        if not row:
            raise KeyError(f"no {type_} {oid}")
        uid = self.user(owner)["id"] if owner else row["owner_id"]
        pairs = [[str(k), str(v)] for k, v in key_values]
        with self.lock:
            aid = (self.one("SELECT max(id) AS m FROM mapann")["m"] or 0) + 1
            self.q("INSERT INTO mapann VALUES (?, ?, ?, ?, ?, ?, ?, julianday('now'))", aid, type_, oid,
                   uid, row["group_id"], ns, json.dumps(pairs))
        return aid


def _uuid() -> str:
    h = secrets.token_hex(16)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --- OME-Zarr (NGFF 0.4, Zarr v2) and PNG, written with the standard library -----------------

def level_shape(size, level: int) -> list[int]:
    t, c, z, y, x = size
    return [t, c, z, max(1, -(-y // 2 ** level)), max(1, -(-x // 2 ** level))]


def write_ome_zarr(root: Path, name: str, size, levels: int, chunk: int, physical_size: float) -> None:
    root.mkdir(parents=True, exist_ok=True)
    t, c, z, y, x = size
    (root / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    axes = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"},
            {"name": "z", "type": "space", "unit": "micrometer"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    datasets = [{"path": str(lv), "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1.0, 1.0, physical_size * 2 ** lv, physical_size * 2 ** lv]}]}
        for lv in range(levels)]
    colours = ["00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF"]
    attrs = {"multiscales": [{"version": "0.4", "name": name, "axes": axes, "datasets": datasets,
                              "type": "nearest"}],
             "omero": {"name": name, "version": "0.4",
                       "channels": [{"label": f"Ch{i}", "color": colours[i % len(colours)], "active": True,
                                     "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
                                    for i in range(c)],
                       "rdefs": {"defaultT": 0, "defaultZ": z // 2, "model": "color"}}}
    (root / ".zattrs").write_text(json.dumps(attrs, indent=1))
    for lv in range(levels):
        shape = level_shape(size, lv)
        ly, lx = shape[3], shape[4]
        cy, cx = min(chunk, ly), min(chunk, lx)
        arr = root / str(lv)
        arr.mkdir(exist_ok=True)
        (arr / ".zarray").write_text(json.dumps({
            "zarr_format": 2, "shape": shape, "chunks": [1, 1, 1, cy, cx], "dtype": "|u1",
            "compressor": {"id": "zlib", "level": 1}, "fill_value": 0, "order": "C", "filters": None,
            "dimension_separator": "/"}))
        step = 2 ** lv
        for ti in range(t):
            for ci in range(c):
                for zi in range(z):
                    for by in range(-(-ly // cy)):
                        for bx in range(-(-lx // cx)):
                            buf = bytearray(cy * cx)  # edge chunks are padded with the fill value
                            for j in range(cy):
                                yy = by * cy + j
                                if yy >= ly:
                                    break
                                for i in range(cx):
                                    xx = bx * cx + i
                                    if xx >= lx:
                                        break
                                    buf[j * cx + i] = pixel(ti, ci, zi, yy * step, xx * step)
                            path = arr / str(ti) / str(ci) / str(zi) / str(by) / str(bx)
                            path.parent.mkdir(parents=True, exist_ok=True)
                            path.write_bytes(zlib.compress(bytes(buf), 1))


def plane(size, t: int, c: int, z: int, max_side: int) -> tuple[int, int, bytes]:
    """A (width, height, grey bytes) rendering of one plane, scaled down to ``max_side``."""
    _, _, _, y, x = size
    scale = max(1, -(-max(x, y) // max_side))
    w, h = -(-x // scale), -(-y // scale)
    out = bytearray(w * h)
    for j in range(h):
        for i in range(w):
            out[j * w + i] = pixel(t, c, z, j * scale, i * scale)
    return w, h, bytes(out)


def png(width: int, height: int, grey: bytes) -> bytes:
    """An 8-bit greyscale PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + grey[r * width:(r + 1) * width] for r in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
