"""The OMERO.web stand-in's HTTP server (standard library only).

What it answers, with the response shapes OMERO.web 5.x documents and produces:

* JSON API (``omeroweb.api``): ``/api/`` (versions), ``/api/v0/`` (the ``url:*`` map),
  ``/api/v0/token/`` (CSRF token, also set as the ``csrftoken`` cookie), ``/api/v0/servers/``,
  ``/api/v0/login/`` (POST ``username``, ``password``, ``server`` with ``X-CSRFToken``; answers
  ``{"success": true, "eventContext": {...}}`` and sets the ``sessionid`` cookie, or 403
  ``{"message": ...}``), and under ``/api/v0/m/``: ``projects/``, ``projects/<id>/``,
  ``projects/<id>/datasets/``, ``datasets/``, ``datasets/<id>/``, ``datasets/<id>/images/``,
  ``images/``, ``images/<id>/``, ``screens/``, ``screens/<id>/``, ``screens/<id>/plates/``,
  ``plates/``, ``plates/<id>/``, ``plates/<id>/wells/``. Lists take ``offset``, ``limit``
  (default 200, at most 500), ``owner``, ``group``, ``childCount``, ``orphaned`` and the parent
  filters (``project``, ``dataset``, ``screen``), and answer ``{"data": [...], "meta": {"offset",
  "limit", "maxLimit", "totalCount"}}``. Objects carry ``@id``, ``@type`` (OME 2016-06 schema
  URIs), ``Name``, ``omero:details`` (owner, group, permissions) and ``url:*`` links.
* ``/webclient/api/annotations/?type=map&image=<id>&...`` (``page``, ``limit``): map annotations
  as ``{"annotations": [{"id", "ns", "owner", "date", "permissions", "link": {"parent": ...},
  "class": "MapAnnotationI", "values": [[key, value], ...]}], "experimenters": [...]}``.
* ``/webgateway/render_thumbnail/<id>/[<w>/[<h>/]]``: the thumbnail (a PNG here; OMERO renders
  JPEG).
* ``/zarr/v0.4/image/<id>.zarr/<key>``: the image's OME-Zarr (NGFF 0.4, Zarr v2: ``.zgroup``,
  ``.zattrs``, ``<level>/.zarray``, ``<level>/t/c/z/y/x`` chunks), laid out like the OMERO.web
  zarr plugin / omero-ms-zarr, when the stand-in is started with zarr on.

Authentication is OMERO.web's: a Django session (cookie ``sessionid``) made by the login POST,
or by joining an existing OMERO session with ``?bsession=<session key>`` on any request.
Without one, JSON API views answer 403 ``{"message": "Not logged in"}`` and the webclient,
webgateway and zarr views redirect (302) to ``/webclient/login/``.

Permissions: what a user may not read is simply not found (404 ``{"message": "Image 7 not
found"}``), as OMERO's queries filter it out; asking a list for a ``group`` the user is not a
member of is a ``SecurityViolation`` (403), as on OMERO.

Stand-in options (not OMERO behaviour): ``latency_ms`` before every answer; ``drop_after`` N /
``drop_times`` K / ``drop_path`` P: the requests whose path starts with P after the N-th are
answered by closing the connection, K times.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from .store import Store, plane, png

log = logging.getLogger("omero-standin")

OME = "http://www.openmicroscopy.org/Schemas/OME/2016-06#"
API_VERSION = "0.2"
DEFAULT_LIMIT, MAX_LIMIT = 200, 500
ANNOTATIONS_LIMIT = 500
PLURAL = {"projects": "Project", "datasets": "Dataset", "images": "Image", "screens": "Screen",
          "plates": "Plate"}
CHILD = {"Project": "Dataset", "Dataset": "Image", "Screen": "Plate", "Plate": "Image"}


@dataclass
class Options:
    latency_ms: float = 0.0
    drop_after: int = -1
    drop_times: int = 1
    drop_path: str = "/api/v0/m/"
    zarr: bool = True
    server_host: str = "localhost"
    server_port: int = 4064


class HttpError(Exception):
    def __init__(self, status: int, body, content_type="application/json", headers=None):
        super().__init__(status)
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers or {}


class Drop(Exception):
    """Close the connection without answering."""


class State:
    def __init__(self, state_dir: Path, options: Options):
        self.state_dir = state_dir
        self.options = options
        self.store = Store(state_dir)
        self.lock = threading.Lock()
        self.status = {"requests": 0, "by_path": {}, "drops": 0, "auth_failures": 0, "logins": 0,
                       "matched": 0}
        self.csrf: set[str] = set()

    def count(self, path: str) -> bool:
        """Count a request; True when it is to be dropped."""
        key = re.sub(r"/\d+(?=/|\.zarr)", "/{id}", path)
        key = re.sub(r"(\.zarr)/.*", r"\1/...", key)
        with self.lock:
            s = self.status
            s["requests"] += 1
            s["by_path"][key] = s["by_path"].get(key, 0) + 1
            drop = False
            o = self.options
            if o.drop_after >= 0 and path.startswith(o.drop_path):
                s["matched"] += 1
                if s["matched"] > o.drop_after and s["drops"] < o.drop_times:
                    s["drops"] += 1
                    drop = True
            self.save_status()
        return drop

    def bump(self, key: str) -> None:
        with self.lock:
            self.status[key] += 1
            self.save_status()

    def save_status(self) -> None:
        tmp = self.state_dir / "status.json.tmp"
        tmp.write_text(json.dumps(self.status))
        os.replace(tmp, self.state_dir / "status.json")


# --- marshalling -----------------------------------------------------------------------------

def _perms(perm: str, mine: bool) -> dict:
    group_read, group_ann, group_write = perm[2] == "r", perm[3] in "aw", perm[4] == "w"
    return {"@type": "TBD#Permissions", "perm": perm, "canAnnotate": mine or group_ann,
            "canDelete": mine, "canEdit": mine or group_write, "canLink": mine or group_write,
            "isWorldWrite": False, "isWorldRead": False, "isGroupWrite": group_write,
            "isGroupRead": group_read, "isGroupAnnotate": group_ann, "isUserWrite": True,
            "isUserRead": True}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "OMERO.web-standin/5.28"
    state: State  # set on the class made by serve()

    def log_message(self, fmt, *args):
        log.info("%s " + fmt, self.address_string(), *args)

    # --- plumbing ------------------------------------------------------------------------------

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def _handle(self, method: str):
        split = urlsplit(self.path)
        self.url_path = split.path
        self.params = parse_qs(split.query, keep_blank_values=True)
        self.set_cookies: list[str] = []
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        st = self.state
        if st.options.latency_ms:
            time.sleep(st.options.latency_ms / 1000)
        if st.count(self.url_path):
            self.close_connection = True
            return
        try:
            status, body, ctype, headers = 200, *self.route(method), {}
        except HttpError as err:
            status, body, ctype, headers = err.status, err.body, err.content_type, err.headers
        except Exception as exc:  # a bug in the stand-in: answer 500 like Django would
            log.exception("error on %s", self.path)
            status, body, ctype, headers = 500, {"message": f"{type(exc).__name__}: {exc}"}, \
                "application/json", {}
        if ctype == "application/json":
            data = json.dumps(body).encode()
            headers.setdefault("X-OMERO-ApiVersion", API_VERSION)
        else:
            data = body if isinstance(body, bytes) else str(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        for c in self.set_cookies:
            self.send_header("Set-Cookie", c)
        self.end_headers()
        self.wfile.write(data)

    def base(self) -> str:
        return f"http://{self.headers.get('Host') or '%s:%d' % self.server.server_address}"

    def param(self, name: str, default=None):
        values = self.params.get(name)
        return values[-1] if values else default

    def int_param(self, name: str, default=None):
        value = self.param(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise HttpError(400, {"message": f"invalid literal for int() with base 10: '{value}'"})

    def cookie(self, name: str) -> str | None:
        jar = cookies.SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie") or "")
        except cookies.CookieError:
            return None
        return jar[name].value if name in jar else None

    # --- sessions ------------------------------------------------------------------------------

    def current_user(self):
        """(experimenter row, OMERO session uuid) of the request, or None."""
        store = self.state.store
        key = self.param("bsession")
        if key:
            row = store.one("SELECT * FROM omero_session WHERE uuid = ?", key)
            if row:
                sid = secrets.token_hex(16)
                store.q("INSERT INTO web_session VALUES (?, ?)", sid, key)
                self.set_cookies.append(f"sessionid={sid}; HttpOnly; Path=/; SameSite=Lax")
                return store.user_by_id(row["user_id"]), key
        sid = self.cookie("sessionid")
        if sid:
            row = store.one("SELECT o.* FROM web_session w JOIN omero_session o ON o.uuid = w.omero_uuid "
                            "WHERE w.sid = ?", sid)
            if row:
                return store.user_by_id(row["user_id"]), row["uuid"]
        return None

    def require_login(self, kind: str):
        found = self.current_user()
        if found:
            self.user = found[0]
            self.user_groups = self.state.store.groups_of(self.user["id"])
            return
        if kind == "api":
            raise HttpError(403, {"message": "Not logged in"})
        raise HttpError(302, b"", "text/html; charset=utf-8",
                        {"Location": "/webclient/login/?" + urlencode({"url": self.path})})

    # --- routing -------------------------------------------------------------------------------

    ROUTES = [
        ("GET", r"/api/", "versions"),
        ("GET", r"/api/v0/", "api_base"),
        ("GET", r"/api/v0/token/", "token"),
        ("GET", r"/api/v0/servers/", "servers"),
        ("POST", r"/api/v0/login/", "login"),
        ("GET", r"/api/v0/login/", "login_get"),
        ("GET", r"/api/v0/m/(projects|datasets|images|screens|plates)/", "objects"),
        ("GET", r"/api/v0/m/(projects|datasets|images|screens|plates)/(\d+)/", "object"),
        ("GET", r"/api/v0/m/projects/(\d+)/datasets/", "project_datasets"),
        ("GET", r"/api/v0/m/datasets/(\d+)/images/", "dataset_images"),
        ("GET", r"/api/v0/m/screens/(\d+)/plates/", "screen_plates"),
        ("GET", r"/api/v0/m/plates/(\d+)/wells/", "plate_wells"),
        ("GET", r"/webclient/api/annotations/", "annotations"),
        ("GET", r"/webgateway/render_thumbnail/(\d+)/(?:(\d+)/(?:(\d+)/)?)?", "thumbnail"),
        ("GET", r"/zarr/v0\.4/image/(\d+)\.zarr/(.*)", "zarr"),
    ]

    def route(self, method: str):
        allowed = False
        for m, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, self.url_path)
            if match:
                if m != method:
                    allowed = True
                    continue
                return getattr(self, "v_" + name)(*match.groups())
        if allowed:
            raise HttpError(405, {"message": f"Method {method} not allowed"})
        raise HttpError(404, b"<h1>Not Found</h1>", "text/html; charset=utf-8")

    # --- JSON API: discovery and login -----------------------------------------------------------

    def v_versions(self):
        return {"data": [{"version": "0", "url:base": f"{self.base()}/api/v0/"}]}, "application/json"

    def v_api_base(self):
        b = f"{self.base()}/api/v0/"
        names = ["experimenters", "experimentergroups", "projects", "datasets", "images", "screens",
                 "plates", "rois"]
        urls = {f"url:{n}": f"{b}m/{n}/" for n in names}
        urls.update({"url:token": f"{b}token/", "url:servers": f"{b}servers/", "url:login": f"{b}login/",
                     "url:save": f"{b}m/save/",
                     "url:schema": "http://www.openmicroscopy.org/Schemas/OME/2016-06"})
        return urls, "application/json"

    def v_token(self):
        token = self.cookie("csrftoken")
        if not token or token not in self.state.csrf:
            token = secrets.token_urlsafe(48)[:64]
            self.state.csrf.add(token)
            self.set_cookies.append(f"csrftoken={token}; Path=/; SameSite=Lax")
        return {"data": token}, "application/json"

    def v_servers(self):
        o = self.state.options
        return {"data": [{"id": 1, "host": o.server_host, "port": o.server_port, "server": "omero"}]}, \
            "application/json"

    def v_login_get(self):
        raise HttpError(405, {"message": "POST only with username, password, server and csrftoken"})

    def v_login(self):
        token = self.cookie("csrftoken")
        header = self.headers.get("X-CSRFToken")
        if not token or token not in self.state.csrf or header != token:
            reason = "CSRF cookie not set." if not token else "CSRF token incorrect."
            raise HttpError(403, f"<h1>Forbidden (403)</h1><p>CSRF verification failed. Request aborted.</p>"
                                 f"<p>{reason}</p>".encode(), "text/html; charset=utf-8")
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("application/json"):
            try:
                form = {k: str(v) for k, v in json.loads(self.body or b"{}").items()}
            except (ValueError, AttributeError):
                form = {}
        else:
            form = {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", "replace"),
                                                   keep_blank_values=True).items()}
        missing = [label for field, label in (("username", "Username"), ("password", "Password"),
                                              ("server", "Server")) if not form.get(field)]
        if missing:
            raise HttpError(403, {"message": " ".join(f"{m}: This field is required." for m in missing)})
        if form["server"] != "1":
            raise HttpError(403, {"message": "Server: Select a valid choice. That choice is not one of "
                                             "the available choices."})
        store = self.state.store
        user = store.one("SELECT * FROM experimenter WHERE username = ?", form["username"])
        if not user or not secrets.compare_digest(user["password"], form["password"]):
            self.state.bump("auth_failures")
            raise HttpError(403, {"message": "Connection not available, please check your user name "
                                             "and password."})
        uuid = store.create_session(user["username"])
        sid = secrets.token_hex(16)
        store.q("INSERT INTO web_session VALUES (?, ?)", sid, uuid)
        self.set_cookies.append(f"sessionid={sid}; HttpOnly; Path=/; SameSite=Lax")
        self.state.bump("logins")
        groups = store.groups_of(user["id"])
        group = store.group(user["default_group"]) if user["default_group"] else None
        ctx = {"sessionId": hash(uuid) & 0xFFFF, "sessionUuid": uuid, "userId": user["id"],
               "userName": user["username"], "groupId": group["id"] if group else None,
               "groupName": group["name"] if group else None, "isAdmin": False, "eventId": -1,
               "eventType": "User", "memberOfGroups": groups + [1], "leaderOfGroups": []}
        return {"success": True, "eventContext": ctx}, "application/json"

    # --- JSON API: objects ---------------------------------------------------------------------

    def visible_sql(self, alias: str = "o") -> tuple[str, list]:
        groups = self.user_groups or [-1]
        marks = ",".join("?" * len(groups))
        sql = (f"({alias}.owner_id = ? OR ({alias}.group_id IN ({marks}) AND "
               f"(SELECT perms FROM grp WHERE id = {alias}.group_id) != 'rw----'))")
        return sql, [self.user["id"], *groups]

    def details(self, row) -> dict:
        store = self.state.store
        owner = store.user_by_id(row["owner_id"])
        group = store.group(row["group_id"])
        mine = row["owner_id"] == self.user["id"]
        return {"@type": "TBD#Details",
                "owner": {"@id": owner["id"], "@type": OME + "Experimenter", "FirstName": owner["first_name"],
                          "LastName": owner["last_name"], "UserName": owner["username"],
                          "omero:details": {"@type": "TBD#Details"}},
                "group": {"@id": group["id"], "@type": OME + "ExperimenterGroup", "Name": group["name"],
                          "omero:details": {"@type": "TBD#Details",
                                            "permissions": _perms(group["perms"], False)}},
                "permissions": _perms(group["perms"], mine)}

    def marshal(self, row, single: bool = False) -> dict:
        type_, oid = row["type"], row["id"]
        b = f"{self.base()}/api/v0/m/"
        out = {"@id": oid, "@type": OME + type_, "Name": row["name"]}
        if row["description"]:
            out["Description"] = row["description"]
        out["omero:details"] = self.details(row)
        extra = json.loads(row["extra"] or "{}")
        if type_ == "Image":
            t, c, z, y, x = extra.get("size", [1, 1, 1, 1, 1])
            ps = extra.get("physical_size", 1.0)
            length = {"@type": "TBD#LengthI", "Unit": "MICROMETER", "Symbol": "µm", "Value": ps}
            pixels = {"@id": oid, "@type": OME + "Pixels", "SizeX": x, "SizeY": y, "SizeZ": z, "SizeC": c,
                      "SizeT": t, "DimensionOrder": "XYZCT", "SignificantBits": 8,
                      "Type": {"@type": "TBD#PixelsType", "value": "uint8"},
                      "PhysicalSizeX": length, "PhysicalSizeY": dict(length),
                      "omero:details": {"@type": "TBD#Details"}}
            if single:
                pixels["Channels"] = [{"@id": oid * 100 + i, "@type": OME + "Channel", "Name": f"Ch{i}",
                                       "SamplesPerPixel": 1, "omero:LogicalChannelId": oid * 100 + i}
                                      for i in range(c)]
            out["Pixels"] = pixels
            out["url:datasets"] = f"{b}images/{oid}/datasets/"
            out["url:rois"] = f"{b}images/{oid}/rois/"
            if not single:
                out["url:image"] = f"{b}images/{oid}/"
        elif type_ == "Project":
            out["url:datasets"] = f"{b}projects/{oid}/datasets/"
            if not single:
                out["url:project"] = f"{b}projects/{oid}/"
        elif type_ == "Dataset":
            out["url:images"] = f"{b}datasets/{oid}/images/"
            out["url:projects"] = f"{b}datasets/{oid}/projects/"
            if not single:
                out["url:dataset"] = f"{b}datasets/{oid}/"
        elif type_ == "Screen":
            out["url:plates"] = f"{b}screens/{oid}/plates/"
            if not single:
                out["url:screen"] = f"{b}screens/{oid}/"
        elif type_ == "Plate":
            out["Rows"], out["Columns"] = extra.get("rows", 1), extra.get("columns", 1)
            out["url:wells"] = f"{b}plates/{oid}/wells/"
            out["url:screens"] = f"{b}plates/{oid}/screens/"
            if not single:
                out["url:plate"] = f"{b}plates/{oid}/"
        return out

    def child_count(self, row) -> int:
        child = CHILD.get(row["type"])
        if not child:
            return 0
        vis, args = self.visible_sql()
        return self.state.store.one(
            f"SELECT count(*) AS n FROM link l JOIN obj o ON o.type = l.child_type AND o.id = l.child_id "
            f"WHERE l.parent_type = ? AND l.parent_id = ? AND l.child_type = ? AND {vis}",
            row["type"], row["id"], child, *args)["n"]

    def list_objects(self, type_: str, parent: tuple[str, int] | None = None):
        self.require_login("api")
        offset = max(0, self.int_param("offset", 0))
        limit = self.int_param("limit", None)
        limit = DEFAULT_LIMIT if limit is None or limit < 0 else min(limit, MAX_LIMIT)
        owner = self.int_param("owner", None)
        group = self.int_param("group", -1)
        child_count = self.param("childCount") == "true"
        orphaned = self.param("orphaned") == "true"
        if group != -1 and group not in self.user_groups:
            raise HttpError(403, {"message": f"omero.SecurityViolation: User {self.user['id']} is not a "
                                             f"member of group {group} and cannot read its data"})
        vis, args = self.visible_sql()
        where, wargs = ["o.type = ?", vis], [type_, *args]
        if parent is None:
            for ptype, name in (("Project", "project"), ("Dataset", "dataset"), ("Screen", "screen")):
                pid = self.int_param(name, None)
                if pid is not None and CHILD.get(ptype) == type_:
                    parent = (ptype, pid)
        if parent is not None:
            where.append("EXISTS (SELECT 1 FROM link l WHERE l.parent_type = ? AND l.parent_id = ? AND "
                         "l.child_type = o.type AND l.child_id = o.id)")
            wargs += list(parent)
        elif orphaned:
            where.append("NOT EXISTS (SELECT 1 FROM link l WHERE l.child_type = o.type AND l.child_id = o.id)")
        if owner is not None and owner != -1:
            where.append("o.owner_id = ?")
            wargs.append(owner)
        if group != -1:
            where.append("o.group_id = ?")
            wargs.append(group)
        store = self.state.store
        cond = " AND ".join(where)
        total = store.one(f"SELECT count(*) AS n FROM obj o WHERE {cond}", *wargs)["n"]
        rows = [] if limit == 0 else store.q(
            f"SELECT * FROM obj o WHERE {cond} ORDER BY lower(o.name), o.id LIMIT ? OFFSET ?",
            *wargs, limit, offset)
        data = []
        for row in rows:
            m = self.marshal(row)
            if child_count and type_ in CHILD:
                m["omero:childCount"] = self.child_count(row)
            data.append(m)
        meta = {"offset": offset, "limit": limit, "maxLimit": MAX_LIMIT, "totalCount": total}
        return {"data": data, "meta": meta}, "application/json"

    def find(self, type_: str, oid: int):
        """The object if the user may read it, else None (OMERO filters what one may not read)."""
        vis, args = self.visible_sql()
        return self.state.store.one(f"SELECT * FROM obj o WHERE o.type = ? AND o.id = ? AND {vis}",
                                    type_, oid, *args)

    def v_objects(self, plural):
        return self.list_objects(PLURAL[plural])

    def v_object(self, plural, oid):
        self.require_login("api")
        type_ = PLURAL[plural]
        row = self.find(type_, int(oid))
        if row is None:
            raise HttpError(404, {"message": f"{type_} {int(oid)} not found"})
        m = self.marshal(row, single=True)
        if self.param("childCount") == "true" and type_ in CHILD:
            m["omero:childCount"] = self.child_count(row)
        return {"data": m}, "application/json"

    def v_project_datasets(self, pid):
        return self.list_objects("Dataset", ("Project", int(pid)))

    def v_dataset_images(self, did):
        return self.list_objects("Image", ("Dataset", int(did)))

    def v_screen_plates(self, sid):
        return self.list_objects("Plate", ("Screen", int(sid)))

    def v_plate_wells(self, pid):
        self.require_login("api")
        plate = self.find("Plate", int(pid))
        offset = max(0, self.int_param("offset", 0))
        limit = self.int_param("limit", None)
        limit = DEFAULT_LIMIT if limit is None or limit < 0 else min(limit, MAX_LIMIT)
        if plate is None:  # wells of a plate one cannot read: none, like the query behind it
            return {"data": [], "meta": {"offset": offset, "limit": limit, "maxLimit": MAX_LIMIT,
                                         "totalCount": 0}}, "application/json"
        vis, args = self.visible_sql()
        rows = self.state.store.q(
            f"SELECT o.*, l.extra AS well FROM link l JOIN obj o ON o.type = 'Image' AND o.id = l.child_id "
            f"WHERE l.parent_type = 'Plate' AND l.parent_id = ? AND l.child_type = 'Image' AND {vis} "
            f"ORDER BY o.id", int(pid), *args)
        wells = []
        for row in rows:
            where = json.loads(row["well"] or "{}")
            image = self.marshal(row)
            wid = int(pid) * 10000 + where.get("row", 0) * 100 + where.get("column", 0)
            wells.append({"@id": wid, "@type": OME + "Well", "Row": where.get("row", 0),
                          "Column": where.get("column", 0), "omero:details": self.details(plate),
                          "WellSamples": [{"@id": row["id"], "@type": OME + "WellSample", "Image": image}],
                          "url:well": f"{self.base()}/api/v0/m/wells/{wid}/"})
        total = len(wells)
        wells = wells[offset:offset + limit]
        return {"data": wells, "meta": {"offset": offset, "limit": limit, "maxLimit": MAX_LIMIT,
                                        "totalCount": total}}, "application/json"

    # --- webclient: annotations ----------------------------------------------------------------

    def v_annotations(self):
        self.require_login("webclient")
        page = self.int_param("page", 1)
        limit = self.int_param("limit", ANNOTATIONS_LIMIT)
        ann_type = self.param("type")
        ns = self.param("ns")
        wanted = []
        for name, type_ in (("image", "Image"), ("dataset", "Dataset"), ("project", "Project"),
                            ("screen", "Screen"), ("plate", "Plate")):
            for value in self.params.get(name, []):
                for part in value.split(","):
                    if part.strip():
                        try:
                            wanted.append((type_, int(part)))
                        except ValueError:
                            raise HttpError(400, b"Invalid parameter value", "text/plain")
        if ann_type not in (None, "", "map"):
            return {"annotations": [], "experimenters": []}, "application/json"
        store = self.state.store
        readable = [(t, i) for t, i in wanted if self.find(t, i) is not None]
        rows = []
        for t, i in readable:
            sql = "SELECT * FROM mapann WHERE parent_type = ? AND parent_id = ?"
            args = [t, i]
            if ns:
                sql += " AND ns = ?"
                args.append(ns)
            rows += store.q(sql, *args)
        rows.sort(key=lambda r: r["id"])
        if page and page > 0 and limit:
            rows = rows[(page - 1) * limit: page * limit]
        anns, owners = [], {}
        for r in rows:
            parent = self.find(r["parent_type"], r["parent_id"])
            group = store.group(r["group_id"])
            mine = r["owner_id"] == self.user["id"]
            perms = {"canDelete": mine, "canAnnotate": mine or group["perms"][3] in "aw",
                     "canLink": mine, "canEdit": mine}
            date = _iso(r["created"])
            anns.append({"id": r["id"], "ns": r["ns"], "name": None, "description": None,
                         "owner": {"id": r["owner_id"]}, "date": date, "permissions": perms,
                         "link": {"id": r["id"] + 100000, "owner": {"id": r["owner_id"]},
                                  "parent": {"id": r["parent_id"], "class": r["parent_type"] + "I",
                                             "name": parent["name"]},
                                  "date": date, "permissions": dict(perms)},
                         "class": "MapAnnotationI", "values": json.loads(r["kv"])})
            owners[r["owner_id"]] = store.user_by_id(r["owner_id"])
        exps = [{"id": u["id"], "omeName": u["username"], "firstName": u["first_name"],
                 "lastName": u["last_name"]} for u in owners.values()]
        return {"annotations": anns, "experimenters": exps}, "application/json"

    # --- webgateway: thumbnails ----------------------------------------------------------------

    def v_thumbnail(self, iid, w=None, h=None):
        self.require_login("webgateway")
        row = self.find("Image", int(iid))
        if row is None:
            raise HttpError(404, b"Failed to render thumbnail", "text/html; charset=utf-8")
        extra = json.loads(row["extra"] or "{}")
        size = extra["size"]
        side = int(w) if w else 96
        if h:
            side = max(side, int(h))
        t = self.int_param("t", 0) or 0
        z = self.int_param("z", size[2] // 2)
        width, height, grey = plane(size, t, 0, z, min(side, 256))
        return png(width, height, grey), "image/png"

    # --- zarr --------------------------------------------------------------------------------

    def v_zarr(self, iid, key):
        self.require_login("zarr")
        if not self.state.options.zarr:
            raise HttpError(404, b"<h1>Not Found</h1>", "text/html; charset=utf-8")
        row = self.find("Image", int(iid))
        if row is None:
            raise HttpError(404, b"Image not found", "text/plain")
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") for p in parts) or not parts:
            raise HttpError(404, b"Not found", "text/plain")
        path = self.state.store.zarr_dir(int(iid)).joinpath(*parts)
        if not path.is_file():
            raise HttpError(404, b"Not found", "text/plain")
        ctype = "application/json" if parts[-1] in (".zattrs", ".zgroup", ".zarray") else \
            "application/octet-stream"
        data = path.read_bytes()
        if ctype == "application/json":  # pass through as bytes, not re-encoded
            return data, "application/json; charset=utf-8"
        return data, ctype


def _iso(julian: float | None) -> str | None:
    if julian is None:
        return None
    seconds = (julian - 2440587.5) * 86400
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def serve(state_dir: Path, options: Options, host: str = "127.0.0.1", port: int = 0) -> None:
    state = State(state_dir, options)
    handler = type("StandinHandler", (Handler,), {"state": state})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    state.save_status()
    (state_dir / "server.pid").write_text(str(os.getpid()))
    info = {"host": httpd.server_address[0], "port": httpd.server_address[1], "pid": os.getpid()}
    tmp = state_dir / "server.json.tmp"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, state_dir / "server.json")
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        state.store.close()
