"""Dask on Slurm: time until n workers are connected, ours vs. plain SLURMCluster,
and a chunked reduction over an OME-Zarr level with 1, 2 and 4 workers.

Starts its own local cluster (devstack: Slurm with the compute nodes node1 and
node2), writes an OME-Zarr image that the demo users can read, and runs the
client as the demo user alice on node1, as a session's kernel runs there; the
workers are her Slurm jobs on the compute nodes.  Start-ups rotate between
our GatewayCluster (TLS with the cluster's own credentials, HTTP on Unix
sockets, private spill folder checked by each job) and a plain
dask_jobqueue.SLURMCluster with the same settings (partition, 1 core, 1 GiB,
walltime, job name, local directory, Python), once with TLS
(``security=True``, its credentials in a 0700 folder of alice's) and once
over plain TCP, so drift in the machine's load hits all alike.

    /opt/bioimage-gateway/venv/bin/python benchmarks/dask_startup.py [--rounds 5] [--workers 2]

Prints each round, the medians, the ratio ours/plain TLS (target <= 1.10) and
ours/plain TCP (what TLS costs), and the reduction's time per worker count
(the scaling curve, on our TLS cluster).
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
import json, os, shutil, statistics, sys, time
import numpy as np
from dask_jobqueue import SLURMCluster
from bioimage_gateway.dask_clusters import new_cluster
from bioimage_gateway.private_paths import private_directory

args = json.loads(sys.argv[1])
n, rounds, image = args["workers"], args["rounds"], args["image"]
same = dict(cores=1, memory="1GiB", walltime="1:00:00")
user = "alice"
home = os.path.expanduser("~")
# dask-jobqueue's TLS writes the workers' credentials here (on the shared file system).
shared = str(private_directory(f"{home}/.bioimage-gateway/bench-plain-tls", create_parents=True))

def plain(**security):
    return SLURMCluster(queue="interactive", processes=1, python=sys.executable,
                        job_name=f"dask-worker-{user}-plain",
                        local_directory="${TMPDIR:-/tmp}/dask-" + user, death_timeout=60,
                        log_directory=f"{home}/.bioimage-gateway/logs/dask",
                        scheduler_options={"dashboard_address": "127.0.0.1:0"},
                        **security, **same)

makers = {
    "ours": lambda: new_cluster(**same),
    "plain_tls": lambda: plain(security=True, shared_temp_directory=shared),
    "plain_tcp": lambda: plain(),
}

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

for make in makers.values():
    startup(make)  # warm-up: file caches, imports on the nodes
times = {name: [] for name in makers}
names = list(makers)
for i in range(rounds):
    for name in names[i % 3:] + names[:i % 3]:  # each goes first in turn
        times[name].append(startup(makers[name]))
    emit(round=i + 1, **{name: times[name][-1] for name in names})
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
     nbytes=int(level.nbytes), address=cluster.scheduler_address)
client.close(); cluster.close()
shutil.rmtree(shared)  # the credentials dask-jobqueue wrote for its (closed) clusters
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
        # The client runs on node1, as a session's kernel runs on its session's node.
        node = devstack.node("node1")
        proc = subprocess.Popen(
            node.argv(sudo_argv("alice", env, [sys.executable, "-c", DRIVER, params])),
            stdout=subprocess.PIPE, stderr=driver_log, text=True, cwd="/tmp",
        )
        medians = None
        curve = {}
        for line in proc.stdout:
            record = json.loads(line)
            if "round" in record:
                print(f"round {record['round']}: {args.workers} workers connected after "
                      f"ours {record['ours']:.2f} s, plain SLURMCluster with TLS "
                      f"{record['plain_tls']:.2f} s, over TCP {record['plain_tcp']:.2f} s",
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
        print(f"median time until {args.workers} workers are connected, {args.rounds} rounds each "
              f"(client on {node.name}, workers on the compute nodes):")
        print(f"  ours (GatewayCluster, TLS):              {medians['ours']:.2f} s")
        print(f"  plain dask_jobqueue SLURMCluster, TLS:   {medians['plain_tls']:.2f} s")
        print(f"  plain dask_jobqueue SLURMCluster, TCP:   {medians['plain_tcp']:.2f} s")
        print(f"  ratio ours/plain TLS: {medians['ours'] / medians['plain_tls']:.2f} "
              "(target <= 1.10)")
        print(f"  ratio ours/plain TCP: {medians['ours'] / medians['plain_tcp']:.2f}")
        print(f"mean over OME-Zarr level 0 {tuple(level['shape'])} {level['dtype']} "
              f"({level['nbytes'] / 2**20:.0f} MiB, {level['chunks']} chunks), median of 3, "
              f"scheduler at {level['address']}:")
        base = curve[1]
        for k, seconds in sorted(curve.items()):
            print(f"  {k} worker(s): {seconds:.2f} s  (speed-up {base / seconds:.2f}x)")
        return 0
    finally:
        devstack.down()


if __name__ == "__main__":
    sys.exit(main())
