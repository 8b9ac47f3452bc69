"""Run the OMERO.web stand-in: ``python -m bioimage_gateway.devstack.omero_standin serve --state-dir D ...``.

Options:
  --state-dir DIR          omero.sqlite3, images/ (OME-Zarr), status.json, server.json, server.pid
  --user NAME:PASSWORD[:G1,G2]  a user and the groups they belong to (first = default group; repeatable)
  --group NAME:PERMS       a group and its permissions (rw----, rwr---, rwra--, rwrw--; repeatable)
  --host / --port          where to listen (default 127.0.0.1, port 0 = a free port; see server.json)
  --no-zarr                do not serve /zarr/v0.4/image/<id>.zarr/ (as an OMERO.web without the plugin)
  --latency-ms MS          sleep this long before answering every request
  --drop-after N           after N requests whose path starts with --drop-path (default /api/v0/m/),
                           close the connection instead of answering, --drop-times times (default 1)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from .server import Options, serve
from .store import Store


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="omero_standin", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--state-dir", required=True, type=Path)
    s.add_argument("--user", action="append", default=[])
    s.add_argument("--group", action="append", default=[])
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--no-zarr", action="store_true")
    s.add_argument("--latency-ms", type=float, default=0.0)
    s.add_argument("--drop-after", type=int, default=-1)
    s.add_argument("--drop-times", type=int, default=1)
    s.add_argument("--drop-path", default="/api/v0/m/")
    s.add_argument("--log-level", default="WARNING")
    args = ap.parse_args(argv)

    logging.basicConfig(level=args.log_level, format="%(asctime)s omero-standin %(message)s")
    args.state_dir.mkdir(parents=True, exist_ok=True)
    groups = {}
    for item in args.group:
        name, _, perms = item.partition(":")
        groups[name] = perms or "rwr---"
    users = []
    for item in args.user:
        name, _, rest = item.partition(":")
        password, _, gs = rest.partition(":")
        users.append({"username": name, "password": password, "groups": [g for g in gs.split(",") if g]})
    store = Store(args.state_dir)
    store.initialise(users, groups)
    store.close()
    options = Options(latency_ms=args.latency_ms, drop_after=args.drop_after, drop_times=args.drop_times,
                      drop_path=args.drop_path, zarr=not args.no_zarr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.state_dir, options, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
