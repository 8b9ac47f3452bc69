"""The stand-in's catalogue: an SQLite file shaped after the iRODS ICAT, and a vault directory.

Tables (a subset of the ICAT's, same meaning): users and groups, collections, data objects (one
replica each, its bytes in ``vault/``), AVUs (``r_meta_main``) attached through
``r_objt_metamap``, and access (``r_objt_access``) with the ICAT's access token numbers.
Object ids come from one sequence shared by collections and data objects, as in the ICAT.

``Catalogue`` is used both by the server (one instance per client connection thread) and by the
seeding API (``seed_objects`` and friends), which writes straight into the same file, so large
collections can be made without one protocol request per object.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from .protocol import MAX_PATH_ALLOWED, IrodsError

# ICAT access tokens (R_TOKN_MAIN, token_namespace 'access_type').
ACCESS_LEVELS = {
    "null": 1000, "execute": 1010, "read_annotation": 1020, "read_system_metadata": 1030,
    "read_metadata": 1040, "read_object": 1050, "write_annotation": 1060,
    "create_metadata": 1070, "modify_metadata": 1080, "delete_metadata": 1090,
    "administer_object": 1100, "create_object": 1110, "modify_object": 1120,
    "delete_object": 1130, "create_token": 1140, "delete_token": 1150, "curate": 1160,
    "own": 1200,
}
ACCESS_ALIASES = {"read": "read_object", "write": "modify_object"}
READ = ACCESS_LEVELS["read_object"]
MODIFY = ACCESS_LEVELS["modify_object"]
DELETE = ACCESS_LEVELS["delete_object"]
OWN = ACCESS_LEVELS["own"]

RESOURCE = "demoResc"
RESOURCE_ID = 10014

SCHEMA = """
CREATE TABLE IF NOT EXISTS r_objt_seq (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT);
CREATE TABLE IF NOT EXISTS r_zone_main (zone_id INTEGER PRIMARY KEY, zone_name TEXT UNIQUE,
    zone_type_name TEXT);
CREATE TABLE IF NOT EXISTS r_user_main (user_id INTEGER PRIMARY KEY, user_name TEXT,
    user_type_name TEXT, zone_name TEXT, user_info TEXT DEFAULT '', r_comment TEXT DEFAULT '',
    password TEXT, create_ts TEXT, modify_ts TEXT, UNIQUE (user_name, zone_name));
CREATE TABLE IF NOT EXISTS r_user_group (group_user_id INTEGER, user_id INTEGER,
    PRIMARY KEY (group_user_id, user_id));
CREATE TABLE IF NOT EXISTS r_coll_main (coll_id INTEGER PRIMARY KEY, parent_coll_name TEXT,
    coll_name TEXT UNIQUE, coll_owner_name TEXT, coll_owner_zone TEXT, coll_map_id INTEGER DEFAULT 0,
    coll_inheritance TEXT DEFAULT '', r_comment TEXT DEFAULT '', create_ts TEXT, modify_ts TEXT);
CREATE INDEX IF NOT EXISTS idx_coll_parent ON r_coll_main (parent_coll_name, coll_name);
CREATE TABLE IF NOT EXISTS r_data_main (data_id INTEGER PRIMARY KEY, coll_id INTEGER,
    data_name TEXT, data_repl_num INTEGER DEFAULT 0, data_version TEXT DEFAULT '',
    data_type_name TEXT DEFAULT 'generic', data_size INTEGER, resc_name TEXT DEFAULT 'demoResc',
    data_path TEXT, data_owner_name TEXT, data_owner_zone TEXT, data_is_dirty INTEGER DEFAULT 1,
    data_status TEXT DEFAULT '', data_checksum TEXT DEFAULT '', data_expiry_ts TEXT DEFAULT '',
    data_map_id INTEGER DEFAULT 0, r_comment TEXT DEFAULT '', create_ts TEXT, modify_ts TEXT,
    resc_hier TEXT DEFAULT 'demoResc', resc_id INTEGER DEFAULT 10014,
    UNIQUE (coll_id, data_name, data_repl_num));
CREATE TABLE IF NOT EXISTS r_meta_main (meta_id INTEGER PRIMARY KEY AUTOINCREMENT,
    meta_attr_name TEXT, meta_attr_value TEXT, meta_attr_unit TEXT DEFAULT '',
    create_ts TEXT, modify_ts TEXT);
CREATE INDEX IF NOT EXISTS idx_meta_avu ON r_meta_main (meta_attr_name, meta_attr_value, meta_attr_unit);
CREATE TABLE IF NOT EXISTS r_objt_metamap (object_id INTEGER, meta_id INTEGER,
    create_ts TEXT, modify_ts TEXT, PRIMARY KEY (object_id, meta_id));
CREATE INDEX IF NOT EXISTS idx_metamap_meta ON r_objt_metamap (meta_id, object_id);
CREATE TABLE IF NOT EXISTS r_objt_access (object_id INTEGER, user_id INTEGER,
    access_type_id INTEGER, create_ts TEXT, modify_ts TEXT, PRIMARY KEY (object_id, user_id));
CREATE TABLE IF NOT EXISTS r_tokn_main (token_id INTEGER PRIMARY KEY, token_namespace TEXT,
    token_name TEXT);
"""


def now_ts() -> str:
    """ICAT timestamps: seconds since the epoch, zero-padded to 11 digits."""
    return f"{int(time.time()):011d}"


def sha2(data: bytes) -> str:
    return "sha2:" + base64.b64encode(hashlib.sha256(data).digest()).decode()


def sha2_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha2:" + base64.b64encode(h.digest()).decode()


def check_path(path: str) -> str:
    """Validate a logical path the way the server does before touching the catalogue."""
    if not path or not path.startswith("/"):
        raise IrodsError("USER_INPUT_PATH_ERR", f"not an absolute path: {path!r}")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_ALLOWED:
        raise IrodsError("USER_PATH_EXCEEDS_MAX", f"path is longer than {MAX_PATH_ALLOWED} bytes")
    if "\0" in path:
        raise IrodsError("USER_INPUT_PATH_ERR", "path contains a NUL byte")
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    if path != "/" and any(p in ("", ".", "..") for p in path.split("/")[1:]):
        raise IrodsError("USER_INPUT_PATH_ERR", f"path has empty, '.' or '..' segments: {path!r}")
    return path


def split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return (parent or "/"), name


class Catalogue:
    def __init__(self, state_dir: Path | str, zone: str | None = None):
        self.state_dir = Path(state_dir)
        self.vault = self.state_dir / "vault"
        self.vault.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.state_dir / "icat.sqlite3", timeout=60,
                                  isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA case_sensitive_like=ON")  # as LIKE is in the ICAT's databases
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT zone_name FROM r_zone_main WHERE zone_type_name='local'").fetchone()
        self.zone = zone or (row[0] if row else None)

    def close(self):
        self.db.close()

    @contextmanager
    def tx(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    def new_id(self, kind: str) -> int:
        return self.db.execute("INSERT INTO r_objt_seq (kind) VALUES (?)", (kind,)).lastrowid

    def vault_path(self, data_id: int) -> Path:
        return self.vault / f"{data_id % 256:02x}" / str(data_id)

    # --- set-up ---------------------------------------------------------------------------------

    def initialise(self, zone: str, users: dict[str, str], admins: dict[str, str] | None = None,
                   groups: dict[str, list[str]] | None = None) -> None:
        """Create the zone, its users (name -> password), groups, homes and trash (idempotent)."""
        self.zone = zone
        ts = now_ts()
        with self.tx() as db:
            db.executemany("INSERT OR IGNORE INTO r_tokn_main VALUES (?, 'access_type', ?)",
                           [(v, k) for k, v in ACCESS_LEVELS.items()])
            if not db.execute("SELECT 1 FROM r_zone_main WHERE zone_name=?", (zone,)).fetchone():
                db.execute("INSERT INTO r_zone_main VALUES (?, ?, 'local')", (9000, zone))
            self._user(db, "public", "rodsgroup", None, ts)
            for name, pw in (admins or {}).items():
                self._user(db, name, "rodsadmin", pw, ts)
            for name, pw in users.items():
                self._user(db, name, "rodsuser", pw, ts)
            public = self.user_id("public")
            for (uid,) in db.execute("SELECT user_id FROM r_user_main WHERE user_type_name != 'rodsgroup'").fetchall():
                db.execute("INSERT OR IGNORE INTO r_user_group VALUES (?, ?)", (public, uid))
            for group, members in (groups or {}).items():
                gid = self._user(db, group, "rodsgroup", None, ts)
                for member in members:
                    db.execute("INSERT OR IGNORE INTO r_user_group VALUES (?, ?)", (gid, self.user_id(member)))
            first_admin = next(iter(admins or {}), None) or next(iter(users))
            for coll in ("/", f"/{zone}", f"/{zone}/home", f"/{zone}/trash", f"/{zone}/trash/home"):
                self._ensure_coll(db, coll, first_admin, ts)
                self._grant(db, coll, "public", READ)
            for name in list(users) + list(admins or {}):
                for coll in (f"/{zone}/home/{name}", f"/{zone}/trash/home/{name}"):
                    self._ensure_coll(db, coll, name, ts)

    def _user(self, db, name, type_, password, ts) -> int:
        row = db.execute("SELECT user_id FROM r_user_main WHERE user_name=? AND zone_name=?",
                         (name, self.zone)).fetchone()
        if row:
            if password is not None:
                db.execute("UPDATE r_user_main SET password=? WHERE user_id=?", (password, row[0]))
            return row[0]
        uid = self.new_id("user")
        db.execute("INSERT INTO r_user_main (user_id, user_name, user_type_name, zone_name, password,"
                   " create_ts, modify_ts) VALUES (?,?,?,?,?,?,?)",
                   (uid, name, type_, self.zone, password, ts, ts))
        return uid

    def _ensure_coll(self, db, path, owner, ts) -> int:
        row = db.execute("SELECT coll_id FROM r_coll_main WHERE coll_name=?", (path,)).fetchone()
        if row:
            return row[0]
        parent = split(path)[0] if path != "/" else "/"
        cid = self.new_id("coll")
        db.execute("INSERT INTO r_coll_main (coll_id, parent_coll_name, coll_name, coll_owner_name,"
                   " coll_owner_zone, create_ts, modify_ts) VALUES (?,?,?,?,?,?,?)",
                   (cid, parent, path, owner, self.zone, ts, ts))
        db.execute("INSERT OR REPLACE INTO r_objt_access VALUES (?,?,?,?,?)",
                   (cid, self.user_id(owner), OWN, ts, ts))
        return cid

    def _grant(self, db, path, user, level):
        ts = now_ts()
        oid = self.object_id(path)
        if level == ACCESS_LEVELS["null"]:
            db.execute("DELETE FROM r_objt_access WHERE object_id=? AND user_id=?", (oid, self.user_id(user)))
        else:
            db.execute("INSERT OR REPLACE INTO r_objt_access VALUES (?,?,?,?,?)",
                       (oid, self.user_id(user), level, ts, ts))

    # --- look-ups -------------------------------------------------------------------------------

    def user(self, name: str, zone: str | None = None):
        return self.db.execute(
            "SELECT user_id, user_name, user_type_name, zone_name, password FROM r_user_main"
            " WHERE user_name=? AND zone_name=?", (name, zone or self.zone)).fetchone()

    def user_id(self, name: str) -> int:
        row = self.user(name)
        if not row:
            raise IrodsError("CAT_INVALID_USER", f"no such user or group: {name}")
        return row[0]

    def principal_ids(self, user_id: int) -> list[int]:
        return [user_id] + [r[0] for r in self.db.execute(
            "SELECT group_user_id FROM r_user_group WHERE user_id=?", (user_id,))]

    def collection(self, path: str):
        return self.db.execute(
            "SELECT coll_id, coll_name, coll_owner_name, coll_owner_zone, create_ts, modify_ts,"
            " coll_inheritance FROM r_coll_main WHERE coll_name=?", (path,)).fetchone()

    def data_object(self, path: str):
        parent, name = split(path)
        return self.db.execute(
            "SELECT d.data_id, d.coll_id, d.data_name, d.data_size, d.data_checksum,"
            " d.data_owner_name, d.data_owner_zone, d.create_ts, d.modify_ts, d.data_path"
            " FROM r_data_main d JOIN r_coll_main c ON c.coll_id = d.coll_id"
            " WHERE c.coll_name=? AND d.data_name=?", (parent, name)).fetchone()

    def object_id(self, path: str) -> int:
        coll = self.collection(path)
        if coll:
            return coll[0]
        obj = self.data_object(path)
        if obj:
            return obj[0]
        raise IrodsError("OBJ_PATH_DOES_NOT_EXIST", f"{path} does not exist")

    def access_level(self, object_id: int, principals: list[int]) -> int:
        marks = ",".join("?" * len(principals))
        row = self.db.execute(
            f"SELECT max(access_type_id) FROM r_objt_access WHERE object_id=? AND user_id IN ({marks})",
            (object_id, *principals)).fetchone()
        return row[0] or 0

    # --- seeding API (straight into the catalogue, no protocol) --------------------------------

    def seed_collection(self, path: str, owner: str) -> int:
        """Create ``path`` and any missing parents, owned by ``owner``."""
        check_path(path)
        ts = now_ts()
        with self.tx() as db:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                cid = self._ensure_coll(db, "/" + "/".join(parts[:i]), owner, ts)
        return cid

    def seed_objects(self, collection: str, owner: str, objects: Iterable[tuple[str, bytes]],
                     checksums: bool = True, metadata: dict[str, list[tuple[str, str, str]]] | None = None,
                     batch: int = 5000) -> int:
        """Register data objects ``(name, content)`` in ``collection`` (created if missing), owned
        by ``owner``, with their bytes written to the vault; returns how many were added.
        ``metadata`` maps an object name to its AVUs ``(attribute, value, units)``."""
        cid = self.seed_collection(collection, owner)
        owner_id = self.user_id(owner)
        ts = now_ts()
        count = 0
        pending: list[tuple[str, bytes]] = []

        def flush():
            nonlocal count
            with self.tx() as db:
                rows, acl = [], []
                for name, content in pending:
                    check_path(f"{collection}/{name}")
                    data_id = self.new_id("data")
                    vpath = self.vault_path(data_id)
                    vpath.parent.mkdir(parents=True, exist_ok=True)
                    vpath.write_bytes(content)
                    rows.append((data_id, cid, name, len(content), str(vpath), owner, self.zone,
                                 sha2(content) if checksums else "", ts, ts))
                    acl.append((data_id, owner_id, OWN, ts, ts))
                    for attr, value, units in (metadata or {}).get(name, ()):
                        self._attach(db, data_id, attr, value, units, ts)
                db.executemany(
                    "INSERT INTO r_data_main (data_id, coll_id, data_name, data_size, data_path,"
                    " data_owner_name, data_owner_zone, data_checksum, create_ts, modify_ts)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
                db.executemany("INSERT INTO r_objt_access VALUES (?,?,?,?,?)", acl)
                count += len(rows)
            pending.clear()

        for item in objects:
            pending.append(item)
            if len(pending) >= batch:
                flush()
        if pending:
            flush()
        return count

    def seed_unchecked_name(self, path: str, name: str) -> None:
        """Rename the data object or (childless) collection at ``path`` to ``name`` without the
        checks the server makes (``check_path``): ``..``, ``a/../../b``, a name with ``/``. The
        server never makes such a name itself; queries then answer with it, as a damaged
        catalogue or a hostile server would, for tests of clients that must not trust names."""
        with self.tx() as db:
            obj = self.data_object(path)
            if obj:
                db.execute("UPDATE r_data_main SET data_name=? WHERE data_id=?", (name, obj[0]))
                return
            coll = self.collection(path)
            if not coll:
                raise IrodsError("OBJ_PATH_DOES_NOT_EXIST", f"{path} does not exist")
            parent = split(path)[0]
            db.execute("UPDATE r_coll_main SET coll_name=? WHERE coll_id=?", (f"{parent}/{name}", coll[0]))

    def seed_metadata(self, path: str, attribute: str, value: str, units: str = "") -> None:
        with self.tx() as db:
            self._attach(db, self.object_id(path), attribute, value, units, now_ts())

    def seed_access(self, path: str, user: str, level: str) -> None:
        level = ACCESS_ALIASES.get(level, level)
        with self.tx() as db:
            self._grant(db, path, user, ACCESS_LEVELS[level])

    def _attach(self, db, object_id, attr, value, units, ts) -> bool:
        row = db.execute("SELECT meta_id FROM r_meta_main WHERE meta_attr_name=? AND meta_attr_value=?"
                         " AND meta_attr_unit=?", (attr, value, units or "")).fetchone()
        meta_id = row[0] if row else db.execute(
            "INSERT INTO r_meta_main (meta_attr_name, meta_attr_value, meta_attr_unit, create_ts,"
            " modify_ts) VALUES (?,?,?,?,?)", (attr, value, units or "", ts, ts)).lastrowid
        cur = db.execute("INSERT OR IGNORE INTO r_objt_metamap VALUES (?,?,?,?)", (object_id, meta_id, ts, ts))
        return cur.rowcount == 1


# --- GenQuery ---------------------------------------------------------------------------------

# Column number -> (table alias, SQL expression); numbers as in iRODS rodsGenQuery.h.
COLUMNS: dict[int, tuple[str, str]] = {
    101: ("z", "z.zone_id"), 102: ("z", "z.zone_name"), 103: ("z", "z.zone_type_name"),
    201: ("u", "u.user_id"), 202: ("u", "u.user_name"), 203: ("u", "u.user_type_name"),
    204: ("u", "u.zone_name"), 206: ("u", "u.user_info"), 207: ("u", "u.r_comment"),
    208: ("u", "u.create_ts"), 209: ("u", "u.modify_ts"),
    401: ("d", "d.data_id"), 402: ("d", "d.coll_id"), 403: ("d", "d.data_name"),
    404: ("d", "d.data_repl_num"), 405: ("d", "d.data_version"), 406: ("d", "d.data_type_name"),
    407: ("d", "d.data_size"), 409: ("d", "d.resc_name"), 410: ("d", "d.data_path"),
    411: ("d", "d.data_owner_name"), 412: ("d", "d.data_owner_zone"), 413: ("d", "d.data_is_dirty"),
    414: ("d", "d.data_status"), 415: ("d", "d.data_checksum"), 416: ("d", "d.data_expiry_ts"),
    417: ("d", "d.data_map_id"), 418: ("d", "d.r_comment"), 419: ("d", "d.create_ts"),
    420: ("d", "d.modify_ts"), 422: ("d", "d.resc_hier"), 423: ("d", "d.resc_id"),
    500: ("c", "c.coll_id"), 501: ("c", "c.coll_name"), 502: ("c", "c.parent_coll_name"),
    503: ("c", "c.coll_owner_name"), 504: ("c", "c.coll_owner_zone"), 505: ("c", "c.coll_map_id"),
    506: ("c", "c.coll_inheritance"), 507: ("c", "c.r_comment"), 508: ("c", "c.create_ts"),
    509: ("c", "c.modify_ts"),
    600: ("dm", "dm.meta_attr_name"), 601: ("dm", "dm.meta_attr_value"), 602: ("dm", "dm.meta_attr_unit"),
    603: ("dm", "dm.meta_id"), 604: ("dm", "dm.create_ts"), 605: ("dm", "dm.modify_ts"),
    610: ("cm", "cm.meta_attr_name"), 611: ("cm", "cm.meta_attr_value"), 612: ("cm", "cm.meta_attr_unit"),
    613: ("cm", "cm.meta_id"), 614: ("cm", "cm.create_ts"), 615: ("cm", "cm.modify_ts"),
    700: ("da", "da.access_type_id"),
    701: ("da", "(SELECT token_name FROM r_tokn_main WHERE token_id = da.access_type_id)"),
    702: ("da", "'access_type'"), 703: ("da", "da.user_id"), 704: ("da", "da.object_id"),
    710: ("ca", "ca.access_type_id"),
    711: ("ca", "(SELECT token_name FROM r_tokn_main WHERE token_id = ca.access_type_id)"),
    712: ("ca", "'access_type'"), 713: ("ca", "ca.user_id"), 714: ("ca", "ca.object_id"),
}

ORDER_BY = 0x400
ORDER_BY_DESC = 0x800
RETURN_TOTAL_ROW_COUNT = 0x20
NO_DISTINCT = 0x40
UPPER_CASE_WHERE = 0x200
AGGREGATES = {2: "min", 3: "max", 4: "sum", 5: "avg", 6: "count"}

_COND = re.compile(r"^\s*(not like|like|begin_of|parent_of|between|in|<>|!=|<=|>=|=|<|>)\s*(.*)$",
                   re.IGNORECASE | re.DOTALL)


def _literal(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == "'" and text[-1] == "'":
        return text[1:-1]
    return text


def parse_condition(expr: str, text: str) -> tuple[str, list]:
    """One GenQuery condition (``= 'x'``, ``like 'a%'``, ``in ('a','b')``, ``between 'a' 'b'``...)
    as SQL over ``expr`` plus its parameters."""
    m = _COND.match(text)
    if not m:
        raise IrodsError("CAT_INVALID_ARGUMENT", f"unsupported GenQuery condition: {text!r}")
    op, rest = m.group(1).lower(), m.group(2)
    if op == "in":
        values = re.findall(r"'([^']*)'", rest)
        if not values:
            raise IrodsError("CAT_INVALID_ARGUMENT", f"empty 'in' list: {text!r}")
        return f"{expr} IN ({','.join('?' * len(values))})", values
    if op == "between":
        values = re.findall(r"'([^']*)'", rest)
        if len(values) != 2:
            raise IrodsError("CAT_INVALID_ARGUMENT", f"'between' needs two values: {text!r}")
        return f"{expr} BETWEEN ? AND ?", values
    value = _literal(rest)
    if op == "begin_of":  # the column's value is a prefix of the argument
        return f"substr(?, 1, length({expr})) = {expr}", [value]
    if op == "parent_of":
        return f"(? = {expr} OR substr(?, 1, length({expr}) + 1) = {expr} || '/')", [value, value]
    if op in ("like", "not like"):
        return f"{expr} {op.upper()} ? ESCAPE '\\'", [value]
    return f"{expr} {'<>' if op == '!=' else op} ?", [value]


def build_genquery(selects: list[tuple[int, int]], conditions: list[tuple[int, str]], options: int,
                   principals: list[int] | None) -> tuple[str, list]:
    """SQL for one GenQuery. ``principals`` None = no access filter (a rodsadmin); otherwise only
    rows for objects (or, without data objects, collections) one of them may read are returned,
    as iRODS does under its STRICT access-control policy."""
    if not selects:
        raise IrodsError("CAT_INVALID_ARGUMENT", "GenQuery selects no columns")
    for col, _ in selects + conditions:
        if col not in COLUMNS:
            raise IrodsError("CAT_INVALID_ARGUMENT", f"GenQuery column {col} is not supported by the stand-in")
    aliases = {COLUMNS[c][0] for c, _ in selects + conditions}
    if aliases & {"dm", "da"}:
        aliases.add("d")
    if aliases & {"cm", "ca"}:
        aliases.add("c")
    if "u" in aliases and aliases - {"u", "da", "ca", "d", "c"}:
        raise IrodsError("CAT_INVALID_ARGUMENT", "users can only be joined to access rows")
    joins: list[str] = []
    if "d" in aliases:
        joins.append("r_data_main d")
        if "c" in aliases:
            joins.append("JOIN r_coll_main c ON c.coll_id = d.coll_id")
    elif "c" in aliases:
        joins.append("r_coll_main c")
    if "dm" in aliases:
        joins.append("JOIN r_objt_metamap dmm ON dmm.object_id = d.data_id"
                     " JOIN r_meta_main dm ON dm.meta_id = dmm.meta_id")
    if "cm" in aliases:
        joins.append("JOIN r_objt_metamap cmm ON cmm.object_id = c.coll_id"
                     " JOIN r_meta_main cm ON cm.meta_id = cmm.meta_id")
    if "da" in aliases:
        joins.append("JOIN r_objt_access da ON da.object_id = d.data_id")
    if "ca" in aliases:
        joins.append("JOIN r_objt_access ca ON ca.object_id = c.coll_id")
    if "u" in aliases:
        if "da" in aliases:
            joins.append("JOIN r_user_main u ON u.user_id = da.user_id")
        elif "ca" in aliases:
            joins.append("JOIN r_user_main u ON u.user_id = ca.user_id")
        elif joins:
            raise IrodsError("CAT_INVALID_ARGUMENT", "users can only be joined to access rows")
        else:
            joins.append("r_user_main u")
    if "z" in aliases:
        if joins:
            raise IrodsError("CAT_INVALID_ARGUMENT", "zones cannot be joined to other tables")
        joins.append("r_zone_main z")

    where, params = [], []
    upper = bool(options & UPPER_CASE_WHERE)
    for col, text in conditions:
        expr = COLUMNS[col][1]
        sql, values = parse_condition(f"upper({expr})" if upper else expr, text)
        where.append(sql)
        params += values
    if principals is not None:
        target = "d.data_id" if "d" in aliases else "c.coll_id" if "c" in aliases else None
        if target:
            marks = ",".join("?" * len(principals))
            where.append(f"EXISTS (SELECT 1 FROM r_objt_access acl WHERE acl.object_id = {target}"
                         f" AND acl.user_id IN ({marks}) AND acl.access_type_id >= {READ})")
            params += principals

    cols, group, order = [], [], []
    has_aggregate = any((flags & 0xFF) in AGGREGATES for _, flags in selects)
    for col, flags in selects:
        expr = COLUMNS[col][1]
        func = AGGREGATES.get(flags & 0xFF)
        cols.append(f"{func}({expr})" if func else expr)
        if not func:
            group.append(expr)
        if flags & ORDER_BY_DESC:
            order.append(f"{expr} DESC")
        elif flags & ORDER_BY:
            order.append(expr)
    if not order and not has_aggregate:
        order = list(group)
    distinct = "" if options & NO_DISTINCT or has_aggregate else "DISTINCT "
    sql = f"SELECT {distinct}{', '.join(cols)} FROM {' '.join(joins)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if has_aggregate and group:
        sql += " GROUP BY " + ", ".join(group)
    if order:
        sql += " ORDER BY " + ", ".join(order)
    return sql, params
