"""Dask on Slurm: time until n workers are connected, ours vs. plain SLURMCluster,
and a chunked reduction over an OME-Zarr level with 1, 2 and 4 workers.

Starts its own local Slurm (devstack), writes an OME-Zarr image that the demo
users can read, and runs the clients as the demo user alice (workers are her
Slurm jobs).  Start-ups alternate between our GatewayCluster and a plain
dask_jobqueue.SLURMCluster with the same settings (partition, 1 core, 1 GiB,
walltime, job name, local directory, Python), so drift in the machine's load
hits both alike.

    /opt/bioimage-gateway/venv/bin/python benchmarks/dask_startup.py [--rounds 5] [--workers 2]

Prints each round, the medians, the ratio ours/plain (target <= 1.10), and the
reduction's time per worker count (the scaling curve).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bioimage_gateway.devstack.stack import Devstack

DRIVER = r'''
import json, statistics, sys, time
import numpy as np
from dask_jobqueue import SLURMCluster
from bioimage_gateway.dask_clusters import new_cluster

args = json.loads(sys.argv[1])
n, rounds, image = args["workers"], args["rounds"], args["image"]
same = dict(cores=1, memory="1GiB", walltime="1:00:00")
user = "alice"

def plain():
    return SLURMCluster(queue="interactive", processes=1, python=sys.executable,
                        job_name=f"dask-worker-{user}-plain",
                        local_directory="${TMPDIR:-/tmp/" + user + "}", death_timeout=60,
                        log_directory=f"/home/{user}/.bioimage-gateway/logs/dask",
                        scheduler_options={"dashboard_address": "127.0.0.1:0"}, **same)

def ours():
    return new_cluster(**same)

def startup(make):
    started = time.perf_counter()
    cluster = make()
    cluster.scale(n)
    cluster.wait_for_workers(n, timeout=120)
    elapsed = time.perf_counter() - started
    cluster.close()
    return elapsed

def emit(**kw):
    print(json.dumps(kw), flush=True)

startup(ours); startup(plain)  # warm-up: file caches, imports on the node
times = {"ours": [], "plain": []}
for i in range(rounds):
    for name, make in (("ours", ours), ("plain", plain)) if i % 2 == 0 else (("plain", plain), ("ours", ours)):
        times[name].append(startup(make))
    emit(round=i + 1, ours=times["ours"][-1], plain=times["plain"][-1])
emit(medians={k: statistics.median(v) for k, v in times.items()})

from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
node = next(iter(Reader(parse_url(image))()))
level = node.data[0]
cluster = new_cluster(**same)
client = cluster.get_client()
curve = {}
for k in (1, 2, 4):
    cluster.scale(k)
    cluster.wait_for_workers(k, timeout=120)
    while len(client.scheduler_info()["workers"]) > k:
        time.sleep(0.2)
    client.compute(level.sum(dtype="u8"), sync=True)  # warm-up on these workers
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        total = client.compute(level.astype("f8").mean(), sync=True)
        runs.append(time.perf_counter() - t)
    curve[k] = statistics.median(runs)
    emit(workers=k, seconds=curve[k], mean=float(total))
emit(shape=list(level.shape), chunks=level.npartitions, dtype=str(level.dtype),
     nbytes=int(level.nbytes))
client.close(); cluster.close()
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shape", default="64,1024,1024", help="z,y,x of level 0 (uint16)")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "dask"))
    from support_dask import sudo_argv, user_env, write_ome_zarr

    state_dir = Path(tempfile.mkdtemp(prefix="gw-bench-dask-", dir="/tmp"))
    devstack = Devstack(state_dir)
    try:
        devstack.up()
        shape = tuple(int(v) for v in args.shape.split(","))
        image = write_ome_zarr(state_dir / "data" / "bench.ome.zarr", shape=shape,
                               chunks=(8, 256, 256))
        env = user_env("alice", {
            "SLURM_CONF": str(devstack.slurm().conf),
            "BIOIMAGE_GATEWAY_PARTITION": "interactive",
            "BIOIMAGE_GATEWAY_GROUPS": "imaging",
        })
        params = json.dumps({"workers": args.workers, "rounds": args.rounds, "image": str(image)})
        driver_log = open(state_dir / "driver.log", "w")  # dask's own chatter
        proc = subprocess.Popen(
            sudo_argv("alice", env, [sys.executable, "-c", DRIVER, params]),
            stdout=subprocess.PIPE, stderr=driver_log, text=True, cwd="/tmp",
        )
        medians = None
        curve = {}
        for line in proc.stdout:
            record = json.loads(line)
            if "round" in record:
                print(f"round {record['round']}: {args.workers} workers connected after "
                      f"ours {record['ours']:.2f} s, plain SLURMCluster {record['plain']:.2f} s",
                      flush=True)
            elif "medians" in record:
                medians = record["medians"]
            elif "workers" in record:
                curve[record["workers"]] = record["seconds"]
            elif "shape" in record:
                level = record
        if proc.wait() != 0:
            tail = (state_dir / "driver.log").read_text()[-3000:]
            raise SystemExit(f"the driver failed with status {proc.returncode}:\n{tail}")
        print(f"median time until {args.workers} workers are connected, {args.rounds} rounds each:")
        print(f"  ours (GatewayCluster):       {medians['ours']:.2f} s")
        print(f"  plain dask_jobqueue SLURMCluster: {medians['plain']:.2f} s")
        print(f"  ratio ours/plain: {medians['ours'] / medians['plain']:.2f} (target <= 1.10)")
        print(f"mean over OME-Zarr level 0 {tuple(level['shape'])} {level['dtype']} "
              f"({level['nbytes'] / 2**20:.0f} MiB, {level['chunks']} chunks), median of 3:")
        base = curve[1]
        for k, seconds in sorted(curve.items()):
            print(f"  {k} worker(s): {seconds:.2f} s  (speed-up {base / seconds:.2f}x)")
        return 0
    finally:
        devstack.down()


if __name__ == "__main__":
    sys.exit(main())
