"""The stand-in's TCP server: one thread per client connection, speaking the native protocol.

What one connection goes through, as with an iRODS server:

1. ``RODS_CONNECT`` with a ``StartupPack_PI``; when its ``option`` asks for
   ``request_server_negotiation`` the server answers with its policy (``CS_NEG_REFUSE``: plain
   TCP only) and reads the client's result; then a ``Version_PI`` (``RODS_VERSION``).
2. Native authentication, either the iRODS 4.3 way (``AUTHENTICATION_APN`` with JSON:
   ``auth_agent_auth_request`` gives a challenge, ``auth_agent_auth_response`` checks
   ``base64(md5(challenge + password padded with NULs to 50 bytes))``, NUL bytes of the digest
   replaced by 0x01) or the older one (``AUTH_REQUEST_AN``/``AUTH_RESPONSE_AN``, same digest).
3. API requests until ``RODS_DISCONNECT``.

Server-side options for tests and demos (see ``__main__``): a fixed latency added to every reply,
and dropping the connection (closing it without a reply) once N replies have been sent, to
emulate a network failure; every request is counted in ``status.json`` in the state directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import socketserver
import string
import threading
import time
from dataclasses import dataclass, field as dc_field
from pathlib import Path

from . import protocol as P
from .catalogue import (ACCESS_ALIASES, ACCESS_LEVELS, DELETE, MODIFY, OWN, READ,
                        RETURN_TOTAL_ROW_COUNT, Catalogue, build_genquery, check_path, now_ts,
                        sha2_file, split)
from .protocol import API, Bin, IrodsError, field, int_field, key_values, pack

log = logging.getLogger("irods_standin")

O_ACCMODE, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND = 3, 1, 2, 64, 512, 1024
DATA_OBJ_T, COLL_OBJ_T = 1, 2
MAX_OPEN_STATEMENTS = 50  # open GenQuery statements per connection


@dataclass
class Options:
    zone: str
    release: str = "rods4.3.4"
    latency_ms: float = 0.0
    drop_after: int = -1  # drop the connection once this many (matching) replies were sent
    drop_api: int | None = None  # ... counting only replies to this API number
    drop_times: int = 1  # ... this many times
    acl_policy: str = "strict"  # 'strict': GenQuery shows only what the user may read


class Stats:
    """Request counters, written to ``status.json`` after every reply."""

    def __init__(self, path: Path, info: dict):
        self.path = path
        self.lock = threading.Lock()
        self.data = {**info, "requests": 0, "by_api": {}, "connections": 0, "drops": 0,
                     "auth_failures": 0}
        self.matched = 0
        self._write()

    def _write(self):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)

    def bump(self, key: str, api: str | None = None):
        with self.lock:
            self.data[key] += 1
            if api:
                self.data["by_api"][api] = self.data["by_api"].get(api, 0) + 1
            self._write()


class StandinServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, state_dir: Path, options: Options):
        self.state_dir = state_dir
        self.options = options
        self.drops_left = options.drop_times
        super().__init__(address, Handler)
        host, port = self.server_address[:2]
        self.stats = Stats(state_dir / "status.json",
                           {"pid": os.getpid(), "host": host, "port": port, "zone": options.zone})

    def should_drop(self, api: int) -> bool:
        o = self.options
        if o.drop_after < 0 or (o.drop_api is not None and api != o.drop_api):
            return False
        with self.stats.lock:
            if self.stats.matched >= o.drop_after and self.drops_left > 0:
                self.drops_left -= 1
                return True
            self.stats.matched += 1
            return False


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        conn = Connection(self.server, self.request)
        try:
            conn.run()
        except (ConnectionError, P.ProtocolError, OSError) as exc:
            log.info("connection closed: %s", exc)
        finally:
            conn.cleanup()


@dataclass
class OpenObject:
    path: str
    data_id: int
    file: object
    flags: int
    options: dict
    written: bool = False
    created: bool = False


@dataclass
class Statement:
    cursor: object
    columns: list
    total: int = 0
    pending: list = dc_field(default_factory=list)


class Connection:
    def __init__(self, server: StandinServer, sock: socket.socket):
        self.server = server
        self.options = server.options
        self.sock = sock
        self.cat: Catalogue | None = None
        self.reader = None  # a second SQLite connection for open GenQuery statements
        self.client_user = ""
        self.user = None  # (id, name, type, zone, password) once authenticated
        self.principals: list[int] = []
        self.challenge: bytes | None = None
        self.files: dict[int, OpenObject] = {}
        self.statements: dict[int, Statement] = {}

    # --- plumbing -------------------------------------------------------------------------------

    def cleanup(self):
        for obj in self.files.values():
            try:
                obj.file.close()
            except OSError:
                pass
        self.files.clear()
        self.statements.clear()
        for db in (self.reader, self.cat and self.cat.db):
            if db is not None:
                try:
                    db.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        try:
            self.sock.close()
        except OSError:
            pass

    def reply(self, msg: bytes = b"", int_info: int = 0, bs: bytes = b"", error: bytes = b"",
              type_: str = "RODS_API_REPLY"):
        P.write_packet(self.sock, type_, msg, error, bs, int_info)

    def run(self):
        self.server.stats.bump("connections")
        pkt = P.read_packet(self.sock)
        if pkt.type != "RODS_CONNECT":
            raise P.ProtocolError(f"expected RODS_CONNECT, got {pkt.type}")
        startup = P.parse(pkt.msg, "StartupPack_PI")
        self.client_user = field(startup, "clientUser") or field(startup, "proxyUser")
        self.client_zone = field(startup, "clientRcatZone") or self.options.zone
        if "request_server_negotiation" in field(startup, "option"):
            self.reply(pack("CS_NEG_PI", [("status", 1), ("result", "CS_NEG_REFUSE")]).encode(),
                       type_="RODS_CS_NEG_T")
            answer = P.read_packet(self.sock)
            result = field(P.parse(answer.msg, "CS_NEG_PI"), "result")
            if "CS_NEG_USE_TCP" not in result:
                return  # the client wants TLS, which the stand-in does not offer
        self.reply(pack("Version_PI", [("status", 0), ("relVersion", self.options.release),
                                       ("apiVersion", "d"), ("reconnPort", 0), ("reconnAddr", ""),
                                       ("cookie", 400)]).encode(), type_="RODS_VERSION")
        self.cat = Catalogue(self.server.state_dir, self.options.zone)
        while True:
            pkt = P.read_packet(self.sock)
            if pkt.type == "RODS_DISCONNECT":
                return
            if pkt.type != "RODS_API_REQ":
                raise P.ProtocolError(f"unexpected message type {pkt.type}")
            api = pkt.int_info
            if self.options.latency_ms:
                time.sleep(self.options.latency_ms / 1000)
            if self.server.should_drop(api):
                self.server.stats.bump("drops")
                self.sock.shutdown(socket.SHUT_RDWR)
                return
            name = P.API_NAMES.get(api, str(api))
            try:
                msg, status, bs = self.dispatch(api, pkt)
                error = b""
            except IrodsError as exc:
                log.info("%s failed: %s %s", name, exc.name, exc)
                msg, status, bs = b"", exc.code, b""
                error = P.error_stack(exc.code, f"{exc.name}: {exc}")
            except Exception as exc:  # noqa: BLE001 - a stand-in bug: answer, keep serving
                log.exception("%s failed", name)
                msg, status, bs = b"", P.ERRORS["SYS_INTERNAL_ERR"], b""
                error = P.error_stack(status, f"SYS_INTERNAL_ERR: {exc}")
            # counted before the reply goes out, so a client that has its answer sees the count
            self.server.stats.bump("requests", name)
            self.reply(msg, status, bs, error)

    def dispatch(self, api: int, pkt: P.Packet):
        if api == API["AUTHENTICATION_APN"]:
            return self.authentication(pkt)
        if api == API["AUTH_REQUEST_AN"]:
            return self.auth_request()
        if api == API["AUTH_RESPONSE_AN"]:
            return self.auth_response(pkt)
        if self.user is None:
            raise IrodsError("SYS_NO_API_PRIV", "authenticate first")
        handler = {
            API["GEN_QUERY_AN"]: self.gen_query,
            API["OBJ_STAT_AN"]: self.obj_stat,
            API["COLL_CREATE_AN"]: self.coll_create,
            API["DATA_OBJ_CREATE_AN"]: self.data_obj_create,
            API["DATA_OBJ_OPEN_AN"]: self.data_obj_open,
            API["DATA_OBJ_READ_AN"]: self.data_obj_read,
            API["DATA_OBJ_WRITE_AN"]: self.data_obj_write,
            API["DATA_OBJ_LSEEK_AN"]: self.data_obj_lseek,
            API["DATA_OBJ_CLOSE_AN"]: self.data_obj_close,
            API["DATA_OBJ_UNLINK_AN"]: self.data_obj_unlink,
            API["DATA_OBJ_CHKSUM_AN"]: self.data_obj_chksum,
            API["MOD_AVU_METADATA_AN"]: self.mod_avu_metadata,
            API["MOD_ACCESS_CONTROL_AN"]: self.mod_access_control,
        }.get(api)
        if handler is None:
            raise IrodsError("SYS_UNMATCHED_API_NUM", f"API {api} is not provided by the stand-in")
        return handler(pkt)

    # --- authentication -------------------------------------------------------------------------

    @staticmethod
    def _new_challenge() -> bytes:
        alphabet = string.ascii_letters + string.digits
        return "".join(secrets.choice(alphabet) for _ in range(64)).encode()

    def _check_digest(self, user_name: str, zone: str, digest: bytes):
        challenge, self.challenge = self.challenge, None
        if challenge is None:
            raise IrodsError("CAT_INVALID_AUTHENTICATION", "no challenge was issued")
        user_name, _, name_zone = user_name.partition("#")
        zone = name_zone or zone or self.options.zone
        if zone != self.options.zone:
            raise IrodsError("CAT_INVALID_ZONE", f"unknown zone {zone}")
        row = self.cat.user(user_name)
        if row is None or row[2] == "rodsgroup":
            self.server.stats.bump("auth_failures")
            raise IrodsError("CAT_INVALID_USER", f"no such user {user_name}")
        padded = row[4].encode("utf-8")[:P.MAX_PASSWORD_LEN].ljust(P.MAX_PASSWORD_LEN, b"\0")
        expected = hashlib.md5(challenge + padded).digest().replace(b"\0", b"\1")
        if not secrets.compare_digest(expected, digest):
            self.server.stats.bump("auth_failures")
            raise IrodsError("CAT_INVALID_AUTHENTICATION", f"wrong password for {user_name}")
        if self.client_user and self.client_user != user_name and row[2] != "rodsadmin":
            raise IrodsError("CAT_INVALID_USER", "only a rodsadmin may act for another user")
        client = self.cat.user(self.client_user) if self.client_user else row
        if client is None:
            raise IrodsError("CAT_INVALID_USER", f"no such user {self.client_user}")
        self.user = client
        self.principals = self.cat.principal_ids(client[0])

    def authentication(self, pkt):
        req = P.read_json_buf(pkt.msg)
        if req.get("scheme", "native") != "native":
            raise IrodsError("SYS_NOT_SUPPORTED", f"authentication scheme {req.get('scheme')!r}")
        op = req.get("next_operation")
        if op == "auth_agent_auth_request":
            self.challenge = self._new_challenge()
            resp = {**req, "request_result": self.challenge.decode()}
            return P.json_buf(resp), 0, b""
        if op == "auth_agent_auth_response":
            try:
                digest = P.base64.b64decode(req.get("digest", ""))
            except ValueError:
                raise IrodsError("CAT_INVALID_AUTHENTICATION", "digest is not base64") from None
            self._check_digest(req.get("user_name", ""), req.get("zone_name", ""), digest)
            return P.json_buf({}), 0, b""
        raise IrodsError("SYS_INVALID_INPUT_PARAM", f"unknown next_operation {op!r}")

    def auth_request(self):
        self.challenge = self._new_challenge()
        return pack("authRequestOut_PI", [("challenge", Bin(self.challenge))]).encode(), 0, b""

    def auth_response(self, pkt):
        root = P.parse(pkt.msg, "authResponseInp_PI")
        try:
            digest = P.base64.b64decode(field(root, "response"))
        except ValueError:
            raise IrodsError("CAT_INVALID_AUTHENTICATION", "response is not base64") from None
        self._check_digest(field(root, "username"), "", digest)
        return b"", 0, b""

    # --- access ---------------------------------------------------------------------------------

    @property
    def is_admin(self) -> bool:
        return self.user[2] == "rodsadmin"

    def level(self, object_id: int) -> int:
        if self.is_admin:
            return OWN
        return self.cat.access_level(object_id, self.principals)

    def require(self, object_id: int, needed: int, path: str):
        if self.level(object_id) < needed:
            raise IrodsError("CAT_NO_ACCESS_PERMISSION", f"{self.user[1]} may not do this on {path}")

    def resolve(self, path: str):
        """('coll', row) or ('data', row) for an existing path; errors otherwise."""
        path = check_path(path)
        coll = self.cat.collection(path)
        if coll:
            return "coll", coll
        obj = self.cat.data_object(path)
        if obj:
            return "data", obj
        raise IrodsError("OBJ_PATH_DOES_NOT_EXIST", f"{path} does not exist")

    # --- GenQuery -------------------------------------------------------------------------------

    def gen_query(self, pkt):
        root = P.parse(pkt.msg, "GenQueryInp_PI")
        max_rows = int_field(root, "maxRows")
        cont = int_field(root, "continueInx")
        offset = int_field(root, "partialStartIndex")
        options = int_field(root, "options")
        if cont > 0:
            stmt = self.statements.get(cont)
            if stmt is None:
                raise IrodsError("CAT_INVALID_ARGUMENT", f"no open query with continueInx {cont}")
            if max_rows <= 0:  # the client closes the statement
                del self.statements[cont]
                return self._gen_query_out([], [], 0, 0), 0, b""
            return self._page(cont, stmt, max_rows)
        sel_el = root.find("InxIvalPair_PI")
        cond_el = root.find("InxValPair_PI")
        selects = list(zip([int(e.text) for e in sel_el.findall("inx")],
                           [int(e.text) for e in sel_el.findall("ivalue")])) if sel_el is not None else []
        conditions = list(zip([int(e.text) for e in cond_el.findall("inx")],
                              [e.text or "" for e in cond_el.findall("svalue")])) if cond_el is not None else []
        if max_rows <= 0:
            return self._gen_query_out([], [], 0, 0), 0, b""
        principals = None if (self.is_admin or self.options.acl_policy != "strict") else self.principals
        sql, params = build_genquery(selects, conditions, options, principals)
        if self.reader is None:
            self.reader = Catalogue(self.server.state_dir, self.options.zone).db
        total = 0
        if options & RETURN_TOTAL_ROW_COUNT:
            total = self.reader.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]
        try:
            cursor = self.reader.execute(sql, params)
        except Exception as exc:  # noqa: BLE001 - reported as the ICAT's SQL error
            raise IrodsError("CAT_SQL_ERR", str(exc)) from None
        if offset > 0:
            cursor.fetchmany(offset)
        stmt = Statement(cursor, [c for c, _ in selects], total=total)
        if len(self.statements) >= MAX_OPEN_STATEMENTS:  # as the ICAT's statement table, drop the oldest
            del self.statements[min(self.statements)]
        key = max(self.statements, default=0) + 1
        self.statements[key] = stmt
        return self._page(key, stmt, max_rows)

    def _page(self, key, stmt, max_rows):
        max_rows = min(max_rows, P.MAX_SQL_ROWS)
        rows = stmt.pending + stmt.cursor.fetchmany(max_rows + 1 - len(stmt.pending))
        stmt.pending = rows[max_rows:]
        rows = rows[:max_rows]
        more = bool(stmt.pending)
        if not more:
            del self.statements[key]
        if not rows:
            raise IrodsError("CAT_NO_ROWS_FOUND", "no rows found")
        return self._gen_query_out(rows, stmt.columns, key if more else 0, stmt.total), 0, b""

    @staticmethod
    def _gen_query_out(rows, columns, cont, total):
        results = []
        for i, col in enumerate(columns):
            values = ["" if r[i] is None else str(r[i]) for r in rows]
            reslen = max((len(v.encode()) for v in values), default=0) + 1
            results.append(("SqlResult_PI", [("attriInx", col), ("reslen", reslen), ("value", values)]))
        return pack("GenQueryOut_PI", [("rowCnt", len(rows)), ("attriCnt", len(columns)),
                                       ("continueInx", cont), ("totalRowCount", total)]
                    + [("SqlResult_PI", r) for r in results]).encode()

    # --- stat and collections ---------------------------------------------------------------------

    def _data_obj_inp(self, pkt):
        root = P.parse(pkt.msg, "DataObjInp_PI")
        path = field(root, "objPath")
        return check_path(path), root, key_values(root.find("KeyValPair_PI"))

    def obj_stat(self, pkt):
        path, _, _ = self._data_obj_inp(pkt)
        kind, row = self.resolve(path)
        if kind == "coll":
            cid, _, owner, zone, created, modified, _ = row
            self.require(cid, READ, path)
            fields = [("objSize", 0), ("objType", COLL_OBJ_T), ("dataMode", 0), ("dataId", cid),
                      ("chksum", ""), ("ownerName", owner), ("ownerZone", zone),
                      ("createTime", created), ("modifyTime", modified)]
            status = COLL_OBJ_T
        else:
            data_id, _, _, size, checksum, owner, zone, created, modified, _ = row
            self.require(data_id, READ, path)
            fields = [("objSize", size), ("objType", DATA_OBJ_T), ("dataMode", 0), ("dataId", data_id),
                      ("chksum", checksum or ""), ("ownerName", owner), ("ownerZone", zone),
                      ("createTime", created), ("modifyTime", modified)]
            status = DATA_OBJ_T
        return pack("RodsObjStat_PI", fields).encode(), status, b""

    def _inherit(self, db, parent_id: int, parent_inherit: str, new_id: int, ts: str):
        if parent_inherit == "1":
            db.execute("INSERT OR IGNORE INTO r_objt_access SELECT ?, user_id, access_type_id, ?, ?"
                       " FROM r_objt_access WHERE object_id=?", (new_id, ts, ts, parent_id))

    def coll_create(self, pkt):
        root = P.parse(pkt.msg, "CollInpNew_PI")
        path = check_path(field(root, "collName"))
        recursive = "recursiveOpr" in key_values(root.find("KeyValPair_PI"))
        if self.cat.collection(path):
            if recursive:
                return b"", 0, b""
            raise IrodsError("CATALOG_ALREADY_HAS_ITEM_BY_THAT_NAME", f"{path} exists")
        if self.cat.data_object(path):
            raise IrodsError("CAT_NAME_EXISTS_AS_DATAOBJ", f"{path} is a data object")
        missing = [path]
        parent = split(path)[0]
        while not self.cat.collection(parent):
            if not recursive or parent == "/":
                raise IrodsError("CAT_UNKNOWN_COLLECTION", f"{parent} does not exist")
            if self.cat.data_object(parent):
                raise IrodsError("CAT_NAME_EXISTS_AS_DATAOBJ", f"{parent} is a data object")
            missing.append(parent)
            parent = split(parent)[0]
        pid, _, _, _, _, _, inherit = self.cat.collection(parent)
        self.require(pid, MODIFY, parent)
        ts = now_ts()
        with self.cat.tx() as db:
            for coll in reversed(missing):
                cid = self.cat.new_id("coll")
                db.execute("INSERT INTO r_coll_main (coll_id, parent_coll_name, coll_name, coll_owner_name,"
                           " coll_owner_zone, coll_inheritance, create_ts, modify_ts) VALUES (?,?,?,?,?,?,?,?)",
                           (cid, split(coll)[0], coll, self.user[1], self.user[3], inherit or "", ts, ts))
                db.execute("INSERT INTO r_objt_access VALUES (?,?,?,?,?)", (cid, self.user[0], OWN, ts, ts))
                self._inherit(db, pid, inherit, cid, ts)
                pid = cid
        return b"", 0, b""

    # --- data objects -----------------------------------------------------------------------------

    def _create(self, path: str, kv: dict) -> tuple[int, str]:
        parent, name = split(path)
        coll = self.cat.collection(parent)
        if coll is None:
            raise IrodsError("CAT_UNKNOWN_COLLECTION", f"{parent} does not exist")
        if self.cat.collection(path):
            raise IrodsError("CAT_NAME_EXISTS_AS_COLLECTION", f"{path} is a collection")
        self.require(coll[0], MODIFY, parent)
        ts = now_ts()
        with self.cat.tx() as db:
            data_id = self.cat.new_id("data")
            vpath = self.cat.vault_path(data_id)
            vpath.parent.mkdir(parents=True, exist_ok=True)
            vpath.write_bytes(b"")
            db.execute("INSERT INTO r_data_main (data_id, coll_id, data_name, data_type_name, data_size,"
                       " data_path, data_owner_name, data_owner_zone, create_ts, modify_ts)"
                       " VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (data_id, coll[0], name, kv.get("dataType", "generic"), 0, str(vpath),
                        self.user[1], self.user[3], ts, ts))
            db.execute("INSERT INTO r_objt_access VALUES (?,?,?,?,?)", (data_id, self.user[0], OWN, ts, ts))
            self._inherit(db, coll[0], coll[6], data_id, ts)
        return data_id, str(vpath)

    def _new_fd(self, obj: OpenObject) -> int:
        fd = 3
        while fd in self.files:
            fd += 1
        self.files[fd] = obj
        return fd

    def _open(self, path, flags, kv, create_only=False):
        """DATA_OBJ_OPEN (``create_only`` False) or DATA_OBJ_CREATE: a new descriptor."""
        if create_only:
            flags = O_RDWR | O_CREAT | O_TRUNC
        acc = flags & O_ACCMODE
        row = self.cat.data_object(path)
        created = truncate = False
        if row is None:
            if self.cat.collection(path):
                raise IrodsError("CAT_NAME_EXISTS_AS_COLLECTION", f"{path} is a collection, not a data object")
            if not flags & O_CREAT:
                raise IrodsError("OBJ_PATH_DOES_NOT_EXIST", f"{path} does not exist")
            data_id, vpath = self._create(path, kv)
            created = True
        else:
            if create_only and "forceFlag" not in kv:
                raise IrodsError("OVERWRITE_WITHOUT_FORCE_FLAG", f"{path} exists")
            data_id, vpath = row[0], row[9]
            self.require(data_id, READ if acc == 0 else MODIFY, path)
            truncate = bool(flags & O_TRUNC) and acc != 0
        f = open(vpath, "r+b" if Path(vpath).exists() else "w+b")
        if truncate:
            f.truncate(0)
        if flags & O_APPEND:
            f.seek(0, os.SEEK_END)
        return self._new_fd(OpenObject(path, data_id, f, flags, kv, written=truncate, created=created))

    def data_obj_create(self, pkt):
        path, root, kv = self._data_obj_inp(pkt)
        return b"", self._open(path, O_RDWR | O_CREAT | O_TRUNC, kv, create_only=True), b""

    def data_obj_open(self, pkt):
        path, root, kv = self._data_obj_inp(pkt)
        return b"", self._open(path, int_field(root, "openFlags"), kv), b""

    def _opened(self, pkt):
        root = P.parse(pkt.msg, "OpenedDataObjInp_PI")
        fd = int_field(root, "l1descInx")
        obj = self.files.get(fd)
        if obj is None:
            raise IrodsError("SYS_FILE_DESC_OUT_OF_RANGE", f"descriptor {fd} is not open")
        return fd, obj, root

    def data_obj_read(self, pkt):
        _, obj, root = self._opened(pkt)
        if obj.flags & O_ACCMODE == O_WRONLY:
            raise IrodsError("SYS_BAD_FILE_DESCRIPTOR", f"{obj.path} was opened write-only")
        data = obj.file.read(max(0, min(int_field(root, "len"), 64 << 20)))
        return b"", len(data), data

    def data_obj_write(self, pkt):
        _, obj, _ = self._opened(pkt)
        if obj.flags & O_ACCMODE == 0:
            raise IrodsError("SYS_BAD_FILE_DESCRIPTOR", f"{obj.path} was opened read-only")
        obj.file.write(pkt.bs)
        obj.written = True
        return b"", len(pkt.bs), b""

    def data_obj_lseek(self, pkt):
        _, obj, root = self._opened(pkt)
        whence = int_field(root, "whence")
        if whence not in (0, 1, 2):
            raise IrodsError("SYS_INVALID_INPUT_PARAM", f"bad whence {whence}")
        pos = obj.file.seek(int_field(root, "offset"), whence)
        return pack("fileLseekOut_PI", [("offset", pos)]).encode(), 0, b""

    def data_obj_close(self, pkt):
        fd, obj, root = self._opened(pkt)
        kv = {**obj.options, **key_values(root.find("KeyValPair_PI"))}
        obj.file.close()
        del self.files[fd]
        if obj.written or obj.created:
            vpath = self.cat.vault_path(obj.data_id)
            checksum = sha2_file(vpath) if ("regChksum" in kv or "verifyChksum" in kv) else ""
            with self.cat.tx() as db:
                db.execute("UPDATE r_data_main SET data_size=?, data_checksum=?, modify_ts=? WHERE data_id=?",
                           (vpath.stat().st_size, checksum, now_ts(), obj.data_id))
        return b"", 0, b""

    def data_obj_unlink(self, pkt):
        path, _, kv = self._data_obj_inp(pkt)
        row = self.cat.data_object(path)
        if row is None:
            if self.cat.collection(path):
                raise IrodsError("CAT_NAME_EXISTS_AS_COLLECTION", f"{path} is a collection")
            raise IrodsError("OBJ_PATH_DOES_NOT_EXIST", f"{path} does not exist")
        data_id = row[0]
        self.require(data_id, DELETE, path)
        zone = self.options.zone
        trash_root = f"/{zone}/trash/"
        if "forceFlag" in kv or path.startswith(trash_root):
            with self.cat.tx() as db:
                db.execute("DELETE FROM r_data_main WHERE data_id=?", (data_id,))
                db.execute("DELETE FROM r_objt_access WHERE object_id=?", (data_id,))
                db.execute("DELETE FROM r_objt_metamap WHERE object_id=?", (data_id,))
            try:
                os.unlink(row[9])
            except OSError:
                pass
            return b"", 0, b""
        # Without forceFlag iRODS moves the object into the user's trash, keeping its path.
        home = f"/{zone}/home/"
        rel = path[len(home):] if path.startswith(home) else f"{self.user[1]}{path}"
        trash_coll = split(f"/{zone}/trash/home/{rel}")[0]
        ts = now_ts()
        with self.cat.tx() as db:
            parts = trash_coll.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                coll = "/" + "/".join(parts[:i])
                if not db.execute("SELECT 1 FROM r_coll_main WHERE coll_name=?", (coll,)).fetchone():
                    cid = self.cat.new_id("coll")
                    db.execute("INSERT INTO r_coll_main (coll_id, parent_coll_name, coll_name, coll_owner_name,"
                               " coll_owner_zone, create_ts, modify_ts) VALUES (?,?,?,?,?,?,?)",
                               (cid, split(coll)[0], coll, self.user[1], self.user[3], ts, ts))
                    db.execute("INSERT INTO r_objt_access VALUES (?,?,?,?,?)", (cid, self.user[0], OWN, ts, ts))
            cid = db.execute("SELECT coll_id FROM r_coll_main WHERE coll_name=?", (trash_coll,)).fetchone()[0]
            name = row[2]
            while db.execute("SELECT 1 FROM r_data_main WHERE coll_id=? AND data_name=?", (cid, name)).fetchone():
                name = f"{row[2]}.{secrets.randbelow(10**9)}"
            db.execute("UPDATE r_data_main SET coll_id=?, data_name=?, modify_ts=? WHERE data_id=?",
                       (cid, name, ts, data_id))
        return b"", 0, b""

    def data_obj_chksum(self, pkt):
        path, _, kv = self._data_obj_inp(pkt)
        row = self.cat.data_object(path)
        if row is None:
            raise IrodsError("OBJ_PATH_DOES_NOT_EXIST", f"{path} does not exist")
        self.require(row[0], READ, path)
        checksum = row[4]
        if not checksum or "forceChksum" in kv:
            checksum = sha2_file(Path(row[9]))
            with self.cat.tx() as db:
                db.execute("UPDATE r_data_main SET data_checksum=? WHERE data_id=?", (checksum, row[0]))
        return pack("STR_PI", [("myStr", checksum)]).encode(), 0, b""

    # --- metadata and access ----------------------------------------------------------------------

    def mod_avu_metadata(self, pkt):
        root = P.parse(pkt.msg, "ModAVUMetadataInp_PI")
        args = [field(root, f"arg{i}") for i in range(10)]
        op, kind, path, attr, value, units = args[:6]
        if op not in ("add", "adda", "set", "rm", "rmw"):
            raise IrodsError("SYS_NOT_SUPPORTED", f"metadata operation {op!r}")
        path = check_path(path)
        if kind == "-d":
            row = self.cat.data_object(path)
            if row is None:
                raise IrodsError("CAT_UNKNOWN_FILE", f"no data object {path}")
        elif kind == "-C":
            row = self.cat.collection(path)
            if row is None:
                raise IrodsError("CAT_UNKNOWN_COLLECTION", f"no collection {path}")
        else:
            raise IrodsError("SYS_NOT_SUPPORTED", f"metadata on {kind} targets")
        if not attr or not value:
            raise IrodsError("CAT_INVALID_ARGUMENT", "attribute and value must not be empty")
        object_id = row[0]
        needed = {"add": "create_metadata", "adda": "create_metadata", "set": "modify_metadata"}.get(op, "delete_metadata")
        self.require(object_id, ACCESS_LEVELS[needed], path)
        ts = now_ts()
        with self.cat.tx() as db:
            if op in ("add", "adda"):
                if not self.cat._attach(db, object_id, attr, value, units, ts):
                    raise IrodsError("CATALOG_ALREADY_HAS_ITEM_BY_THAT_NAME", f"{path} already has this AVU")
            elif op == "set":
                db.execute("DELETE FROM r_objt_metamap WHERE object_id=? AND meta_id IN"
                           " (SELECT meta_id FROM r_meta_main WHERE meta_attr_name=?)", (object_id, attr))
                self.cat._attach(db, object_id, attr, value, units, ts)
            else:
                cmp = "LIKE" if op == "rmw" else "="
                sql = (f"DELETE FROM r_objt_metamap WHERE object_id=? AND meta_id IN (SELECT meta_id FROM"
                       f" r_meta_main WHERE meta_attr_name {cmp} ? AND meta_attr_value {cmp} ?")
                params = [object_id, attr, value]
                if units or op == "rm":
                    sql += f" AND meta_attr_unit {cmp} ?"
                    params.append(units)
                db.execute(sql + ")", params)
        return b"", 0, b""

    def mod_access_control(self, pkt):
        root = P.parse(pkt.msg, "modAccessControlInp_PI")
        level = field(root, "accessLevel")
        user = field(root, "userName")
        path = check_path(field(root, "path"))
        recursive = int_field(root, "recursiveFlag") == 1
        admin_mode = level.startswith("admin:")
        level = level.removeprefix("admin:")
        if admin_mode and not self.is_admin:
            raise IrodsError("CAT_NO_ACCESS_PERMISSION", "admin mode needs a rodsadmin")
        kind, row = self.resolve(path)
        if not admin_mode:
            self.require(row[0], OWN, path)
        ts = now_ts()
        if level in ("inherit", "noinherit"):
            if kind != "coll":
                raise IrodsError("CAT_INVALID_ARGUMENT", "inheritance applies to collections only")
            flag = "1" if level == "inherit" else "0"
            with self.cat.tx() as db:
                if recursive:
                    db.execute("UPDATE r_coll_main SET coll_inheritance=? WHERE coll_name=? OR coll_name LIKE ?",
                               (flag, path, path.rstrip("/") + "/%"))
                else:
                    db.execute("UPDATE r_coll_main SET coll_inheritance=? WHERE coll_id=?", (flag, row[0]))
            return b"", 0, b""
        name = ACCESS_ALIASES.get(level.replace(" ", "_"), level.replace(" ", "_"))
        if name not in ACCESS_LEVELS:
            raise IrodsError("CAT_INVALID_ARGUMENT", f"unknown access level {level!r}")
        target_user = self.cat.user(user, field(root, "zone") or None)
        if target_user is None:
            raise IrodsError("CAT_INVALID_USER", f"no such user or group {user}")
        ids = [row[0]]
        if recursive and kind == "coll":
            prefix = path.rstrip("/") + "/%"
            ids += [r[0] for r in self.cat.db.execute(
                "SELECT coll_id FROM r_coll_main WHERE coll_name LIKE ?", (prefix,))]
            ids += [r[0] for r in self.cat.db.execute(
                "SELECT d.data_id FROM r_data_main d JOIN r_coll_main c ON c.coll_id=d.coll_id"
                " WHERE c.coll_name=? OR c.coll_name LIKE ?", (path, prefix))]
        with self.cat.tx() as db:
            for oid in ids:
                if name == "null":
                    db.execute("DELETE FROM r_objt_access WHERE object_id=? AND user_id=?", (oid, target_user[0]))
                else:
                    db.execute("INSERT OR REPLACE INTO r_objt_access VALUES (?,?,?,?,?)",
                               (oid, target_user[0], ACCESS_LEVELS[name], ts, ts))
        return b"", 0, b""


def serve(state_dir: Path, options: Options, host: str = "127.0.0.1", port: int = 0) -> None:
    server = StandinServer((host, port), state_dir, options)
    info = json.loads((state_dir / "status.json").read_text())
    (state_dir / "server.json").write_text(json.dumps(
        {"host": info["host"], "port": info["port"], "pid": os.getpid(), "zone": options.zone,
         "release": options.release, "latency_ms": options.latency_ms}))
    (state_dir / "server.pid").write_text(str(os.getpid()))
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
