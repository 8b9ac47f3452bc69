"""Staging throughput against peers, one run, printed as figures and ratios.

An OME-Zarr of >= 10 000 small chunks (written here) is staged whole

1. from the iRODS stand-in with ``--latency-ms`` (2) added to every request: ``staging.stage``
   vs python-irodsclient ``data_objects.get`` one object after another (target >= 10x). The
   sequential peer is timed on ``--baseline-objects`` objects (default 1500) and its rate
   extrapolated to the whole tree (0 = time them all);
2. over HTTP from Debian's nginx: ``staging.stage`` vs ``rclone copy --transfers 16`` with
   rclone's http backend (target >= 1.0x; skipped with a note when rclone is not installed);
3. from local disk: ``staging.stage`` (file://) vs ``cp -r`` (target >= 0.8x).

Every run of ours is a cold one (a fresh destination); both sides verify nothing else.

    /opt/bioimage-gateway/venv/bin/python benchmarks/staging.py [--only local] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bioimage_gateway import staging
from bioimage_gateway.devstack.irods_standin import IrodsStandin
from bioimage_gateway.devstack.processes import free_port, stop_pid
from bioimage_gateway.devstack.samples import seed_irods, write_sample_image

ZONE = "benchZone"
USER, PASSWORD = "alice", "alice-bench"


def count_files(root: Path) -> tuple[int, int]:
    files = size = 0
    for folder, _, names in os.walk(root):
        for n in names:
            files += 1
            size += os.path.getsize(os.path.join(folder, n))
    return files, size


def line(label: str, seconds: float, files: int, size: int) -> str:
    return (f"  {label:<44} {seconds:8.2f} s  {files / seconds:9.0f} objects/s  "
            f"{size / seconds / 1e6:7.2f} MB/s")


def start_nginx(root: Path, work: Path) -> tuple[int, int]:
    port = free_port()
    while True:
        try:
            import socket
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    user = "user nobody nogroup;" if os.geteuid() == 0 else ""
    conf = work / "nginx.conf"
    conf.write_text(f"""
{user}
worker_processes 2;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    default_type application/octet-stream;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex on;
        autoindex_format json;
    }}
    server {{  # the same tree with HTML listings, which rclone's http backend reads
        listen 127.0.0.1:{port + 1};
        root {root};
        autoindex on;
    }}
}}
""")
    proc = subprocess.Popen(["/usr/sbin/nginx", "-p", str(work), "-e", str(work / "error.log"), "-c", str(conf),
                             "-g", "daemon off;"], stdin=subprocess.DEVNULL, start_new_session=True)
    import requests
    for _ in range(100):
        try:
            requests.head(f"http://127.0.0.1:{port}/", timeout=1)
            return port, proc.pid
        except requests.ConnectionError:
            time.sleep(0.05)
    stop_pid(proc.pid)
    raise RuntimeError("nginx did not start")


def part_irods(args, work: Path, image: Path, files: int, size: int) -> float:
    standin = IrodsStandin(work / "irods", zone=ZONE, users={USER: PASSWORD},
                           latency_ms=args.latency_ms).start()
    try:
        catalogue = standin.catalogue()
        coll = seed_irods(catalogue, ZONE, USER, "bench", image)
        catalogue.close()
        creds = dict(host=standin.host, port=standin.port, user=USER, zone=ZONE, password=PASSWORD)
        url = f"irods:/{coll}"
        print(f"\n1. iRODS stand-in, {args.latency_ms:g} ms added per request")
        ratios = []
        for run in range(args.repeat):
            t = time.monotonic()
            ours = staging.stage(url, dest=work / f"irods-ours-{run}", threads=args.threads, **creds)
            ours_s = time.monotonic() - t
            assert count_files(ours)[0] == files, "staged copy incomplete"
            print(line(f"staging.stage ({args.threads} threads)", ours_s, files, size))

            from irods.session import iRODSSession
            objects = []
            for folder, _, names in os.walk(image):
                rel = os.path.relpath(folder, image)
                for n in sorted(names):
                    objects.append(n if rel == "." else f"{rel}/{n}")
            sample = objects if args.baseline_objects <= 0 else objects[:args.baseline_objects]
            dest = work / f"irods-get-{run}"
            with iRODSSession(**creds) as session:
                t = time.monotonic()
                for rel in sample:
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    session.data_objects.get(f"{coll}/{rel}", str(target))
                base_s = time.monotonic() - t
            extrapolated = base_s * len(objects) / len(sample)
            note = "" if len(sample) == len(objects) else f" (timed on {len(sample)} objects, extrapolated)"
            print(line("data_objects.get, one after another" + ("*" if note else ""), extrapolated, files, size)
                  + note)
            ratios.append(extrapolated / ours_s)
            print(f"  ratio: {ratios[-1]:.1f}x  (target >= 10x)")
        return min(ratios)
    finally:
        stop_pid(standin.pid)


def part_http(args, work: Path, site: Path, files: int, size: int) -> float | None:
    nginx_dir = work / "nginx"
    nginx_dir.mkdir(exist_ok=True)
    port, nginx_pid = start_nginx(site, nginx_dir)
    try:
        print(f"\n2. HTTP, Debian's nginx on 127.0.0.1:{port}")
        rclone = shutil.which("rclone")
        if not rclone:
            print("  rclone is not installed (apt-get install rclone): no peer measured")
        ratios = []
        for run in range(args.repeat):
            t = time.monotonic()
            ours = staging.stage(f"http://127.0.0.1:{port}/bench.ome.zarr/", dest=work / f"http-ours-{run}",
                                 threads=args.threads)
            ours_s = time.monotonic() - t
            assert count_files(ours)[0] == files, "staged copy incomplete"
            print(line(f"staging.stage ({args.threads} threads)", ours_s, files, size))
            if not rclone:
                continue
            t = time.monotonic()
            subprocess.run([rclone, "copy", "--transfers", "16", "--http-url", f"http://127.0.0.1:{port + 1}/",
                            ":http:bench.ome.zarr", str(work / f"http-rclone-{run}")], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            peer_s = time.monotonic() - t
            got = count_files(work / f"http-rclone-{run}")[0]
            print(line("rclone copy --transfers 16", peer_s, files, size)
                  + ("" if got == files else f" ({got} objects: nginx's listings hide the dot files)"))
            ratios.append(peer_s / ours_s)
            print(f"  ratio: {ratios[-1]:.2f}x  (target >= 1.0x)")
        return min(ratios) if ratios else None
    finally:
        stop_pid(nginx_pid)


def part_local(args, work: Path, image: Path, files: int, size: int) -> float:
    print("\n3. local disk")
    # One untimed round of each first: imports and first-call set-up are not throughput.
    warm = work / "local-warm-up"
    staging.stage(f"file://{image}", dest=warm / "ours", threads=args.threads)
    subprocess.run(["cp", "-r", str(image), str(warm / "cp")], check=True)
    shutil.rmtree(warm)
    ratios = []
    for run in range(args.repeat):
        staged = []

        def ours():
            staged.append(staging.stage(f"file://{image}", dest=work / f"local-ours-{run}", threads=args.threads))

        def peer():
            subprocess.run(["cp", "-r", str(image), str(work / f"local-cp-{run}")], check=True)

        timings = {}
        # Who goes first alternates: the second may find the other's writes still being flushed.
        for name, action in (("ours", ours), ("peer", peer))[:: 1 if run % 2 == 0 else -1]:
            subprocess.run(["sync"], check=False)
            t = time.monotonic()
            action()
            timings[name] = time.monotonic() - t
        assert count_files(staged[0])[0] == files, "staged copy incomplete"
        print(line(f"staging.stage ({args.threads} threads)", timings["ours"], files, size))
        print(line("cp -r", timings["peer"], files, size))
        ratios.append(timings["peer"] / timings["ours"])
        print(f"  ratio: {ratios[-1]:.2f}x  (target >= 0.8x)")
    if len(ratios) > 1:
        print(f"  median ratio {statistics.median(ratios):.2f}x, worst {min(ratios):.2f}x")
    return min(ratios)


PARTS = ("irods", "http", "local")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-ms", type=float, default=2.0)
    ap.add_argument("--baseline-objects", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--only", choices=PARTS, action="append",
                    help="run only this part (may be given more than once); default: all three")
    ap.add_argument("--repeat", type=int, default=1,
                    help="back-to-back runs of each part (ours, then the peer); the ratio printed last is the "
                         "worst of them")
    args = ap.parse_args()
    parts = args.only or list(PARTS)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the servers it started go too

    work = Path(tempfile.mkdtemp(prefix="gw-bench-staging-", dir="/tmp"))
    os.chmod(work, 0o755)
    os.environ["BIOIMAGE_GATEWAY_SCRATCH"] = str(work / "scratch")
    try:
        site = work / "site"
        site.mkdir()
        image = site / "bench.ome.zarr"
        t = time.monotonic()
        # 2 channels x 10 planes x 320 x 320 in 16 x 16 chunks: 8000 + 2000 + 500 chunks
        write_sample_image(image, name="bench", shape_tczyx=(1, 2, 10, 320, 320), levels=3,
                           chunks=(1, 1, 1, 16, 16), seed=1)
        for folder, _, names in os.walk(site):
            os.chmod(folder, 0o755)
            for n in names:
                os.chmod(os.path.join(folder, n), 0o644)
        files, size = count_files(image)
        print(f"OME-Zarr: {files} objects, {size / 1e6:.2f} MB (written in {time.monotonic() - t:.1f} s)")

        results = {}
        if "irods" in parts:
            results["iRODS"] = (part_irods(args, work, image, files, size), "x", 1)
        if "http" in parts:
            results["HTTP"] = (part_http(args, work, site, files, size), "x", 2)
        if "local" in parts:
            results["local"] = (part_local(args, work, image, files, size), "x", 2)
        worst = " (the worst of each part's runs)" if args.repeat > 1 else ""
        print(f"\nratios (peer time / our time){worst}: " + ", ".join(
            f"{name} {'n/a' if r is None else f'{r:.{digits}f}{unit}'}" for name, (r, unit, digits) in results.items()))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
