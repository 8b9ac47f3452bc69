"""Run the iRODS stand-in: ``python -m bioimage_gateway.devstack.irods_standin serve --state-dir D ...``.

Options:
  --state-dir DIR        catalogue (icat.sqlite3), vault/, status.json, server.json, server.pid
  --zone NAME            the zone (default tempZone)
  --user NAME:PASSWORD   a rodsuser (repeatable)
  --admin NAME:PASSWORD  a rodsadmin (repeatable)
  --group NAME:U1,U2     a group and its members (repeatable)
  --host / --port        where to listen (default 127.0.0.1, port 0 = a free port; see server.json)
  --latency-ms MS        sleep this long before answering every request (emulates a remote zone)
  --drop-after N         after N replies (counted over all connections), close the connection
                         instead of answering, --drop-times times (default 1)
  --drop-api NAME        count and drop only requests to this API (e.g. GEN_QUERY_AN)
  --acl-policy strict|open  whether GenQuery hides what the user may not read (default strict)
  --release rodsX.Y.Z    the version announced to clients (default rods4.3.4)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from .catalogue import Catalogue
from .protocol import API
from .server import Options, serve


def _pairs(items, sep=":"):
    out = {}
    for item in items or []:
        name, _, value = item.partition(sep)
        out[name] = value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="irods_standin", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--state-dir", required=True, type=Path)
    s.add_argument("--zone", default="tempZone")
    s.add_argument("--user", action="append")
    s.add_argument("--admin", action="append")
    s.add_argument("--group", action="append")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--latency-ms", type=float, default=0.0)
    s.add_argument("--drop-after", type=int, default=-1)
    s.add_argument("--drop-times", type=int, default=1)
    s.add_argument("--drop-api")
    s.add_argument("--acl-policy", choices=("strict", "open"), default="strict")
    s.add_argument("--release", default="rods4.3.4")
    s.add_argument("--log-level", default="WARNING")
    args = ap.parse_args(argv)

    logging.basicConfig(level=args.log_level, format="%(asctime)s irods-standin %(message)s")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    users = _pairs(args.user)
    admins = _pairs(args.admin) or {"rods": "rods"}
    groups = {g: [m for m in members.split(",") if m] for g, members in _pairs(args.group).items()}
    cat = Catalogue(args.state_dir)
    cat.initialise(args.zone, users, admins, groups)
    cat.close()
    drop_api = None
    if args.drop_api:
        drop_api = int(args.drop_api) if args.drop_api.isdigit() else API[args.drop_api]
    options = Options(zone=args.zone, release=args.release, latency_ms=args.latency_ms,
                      drop_after=args.drop_after, drop_api=drop_api, drop_times=args.drop_times,
                      acl_policy=args.acl_policy)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.state_dir, options, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
