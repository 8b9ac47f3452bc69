"""Listing a 100 000-object iRODS collection through IrodsCatalog, against the iRODS stand-in.

    python benchmarks/irods_listing.py [--objects 100000] [--latency-ms 0]

Seeds the collection straight into the stand-in's catalogue (its seeding API, not one protocol
request per object), then lists it through IrodsCatalog (python-irodsclient over TCP) and prints
the listing time and the requests it took, as the stand-in counted them. The stand-in runs as a
subprocess on 127.0.0.1 with its state in a temporary directory and is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

from bioimage_gateway.catalogs import IrodsCatalog
from bioimage_gateway.devstack.irods_standin import IrodsStandin
from bioimage_gateway.devstack.irods_standin.protocol import MAX_SQL_ROWS

ZONE = "benchZone"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="latency the stand-in adds to every request (a remote zone)")
    args = ap.parse_args()

    state = Path(tempfile.mkdtemp(prefix="irods-bench-", dir="/tmp"))
    standin = IrodsStandin(state, zone=ZONE, users={"alice": "alice-pw"}, latency_ms=args.latency_ms)
    coll = f"/{ZONE}/home/alice/plate"
    try:
        standin.start()
        t0 = time.perf_counter()
        cat = standin.catalogue()
        cat.seed_objects(coll, "alice", ((f"tile-{i:06d}.tif", b"") for i in range(args.objects)))
        cat.close()
        seeded = time.perf_counter() - t0

        with IrodsCatalog(standin.host, standin.port, "alice", ZONE, "alice-pw") as catalog:
            before = standin.status()
            t0 = time.perf_counter()
            first_at = None
            count = 0
            for _entry in catalog.list(f"irods://{ZONE}/home/alice/plate"):
                if first_at is None:
                    first_at = time.perf_counter() - t0
                count += 1
            elapsed = time.perf_counter() - t0
            after = standin.status()

        by_api = {k: v - before["by_api"].get(k, 0) for k, v in after["by_api"].items()
                  if v - before["by_api"].get(k, 0)}
        requests = after["requests"] - before["requests"]
        print(f"objects listed:        {count} (seeded in {seeded:.1f} s)")
        print(f"stand-in latency:      {args.latency_ms:g} ms per request")
        print(f"listing time:          {elapsed:.2f} s ({count / elapsed:,.0f} entries/s); "
              f"first entry after {first_at * 1000:.0f} ms")
        print(f"requests:              {requests} in all: {by_api}")
        print(f"GenQuery pages:        {by_api.get('GEN_QUERY_AN', 0)} "
              f"(1 for sub-collections + ceil({count}/{MAX_SQL_ROWS}) = "
              f"{1 + math.ceil(count / MAX_SQL_ROWS)})")
        assert count == args.objects
    finally:
        standin.stop()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
