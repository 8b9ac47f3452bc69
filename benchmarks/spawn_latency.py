"""Login-to-lab-ready latency: our spawner vs. stock batchspawner SlurmSpawner.

Both hubs run on the same local Slurm in the same run, with the same
resources (1 CPU, 1 GB, partition "interactive"), the same start poll interval
(0.5 s, stock's default) and the same session environment.  Spawns alternate
between the two hubs so that drift in the machine's load hits both alike.

    /opt/bioimage-gateway/venv/bin/python benchmarks/spawn_latency.py [--spawns 5]

Prints each spawn's latency, both medians and the ratio ours/stock (target <= 1.10).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bioimage_gateway.devstack.demo import HubProcess
from bioimage_gateway.devstack.hubclient import HubClient
from bioimage_gateway.devstack.processes import free_port
from bioimage_gateway.devstack.stack import DEMO_USERS, Devstack, dummy_settings

STOCK_CONFIG = Path(__file__).with_name("stock_batchspawner_config.py")

PASSWORD = {u["username"]: u["password"] for u in DEMO_USERS}


def hub_settings(devstack: Devstack, name: str) -> Path:
    settings = yaml.safe_load(Path(devstack.record()["gateway_yaml"]).read_text())
    port = free_port()
    settings["hub"].update(
        port=port, public_url=f"http://127.0.0.1:{port}", api_port=free_port(),
        proxy_api_port=free_port(), data_dir=str(devstack.state_dir / name),
    )
    settings["slurm"]["start_poll_interval"] = 0.5
    # Both hubs sign users in the same way (local passwords), so only spawning differs.
    settings["auth"] = dummy_settings(devstack.state_dir)
    path = devstack.state_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    (devstack.state_dir / name).mkdir(exist_ok=True)
    return path


def one_spawn(hub: HubProcess, username: str, options: dict) -> float:
    """Seconds from the login request to JupyterLab's page answering 200."""
    client = HubClient(hub.url, username, PASSWORD[username])
    started = time.perf_counter()
    client.login()
    response = client.api("POST", f"/users/{username}/server", json=options)
    assert response.status_code in (201, 202), response.text
    client.wait_ready(timeout=180)
    lab = client.open_lab()
    assert lab.status_code == 200 and "JupyterLab" in lab.text, lab.status_code
    elapsed = time.perf_counter() - started
    client.stop()
    return elapsed


def main() -> int:
    # SIGTERM (timeout, kill) still runs the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=5)
    args = parser.parse_args()

    state_dir = Path(tempfile.mkdtemp(prefix="gw-bench-", dir="/tmp"))
    devstack = Devstack(state_dir)
    hubs: list[HubProcess] = []
    try:
        devstack.up()
        # Ours as a site runs it: the hub account, acting through the shipped sudo rules.
        # Stock as root: its `sudo -E` is what those rules refuse (a site would grant SETENV).
        # Both on the service host, sessions on the compute nodes.
        ours = HubProcess(hub_settings(devstack, "ours"), state_dir, state_dir / "ours.log",
                          run_as=devstack.record()["hub_account"], network=devstack.network())
        stock = HubProcess(
            hub_settings(devstack, "stock"), state_dir, state_dir / "stock.log",
            config_file=STOCK_CONFIG, network=devstack.network(),
        )
        for hub in (ours, stock):
            hub.start()
            hubs.append(hub)
        ours_options = {"profile": "cpu", "cpus": 1, "memory_gb": 1, "walltime_hours": 1}
        # One warm-up spawn each: the first start pays for cold file caches.
        one_spawn(ours, "alice", ours_options)
        one_spawn(stock, "bob", {})
        results: dict[str, list[float]] = {"ours": [], "stock": []}
        for i in range(args.spawns):
            results["ours"].append(one_spawn(ours, "alice", ours_options))
            results["stock"].append(one_spawn(stock, "bob", {}))
            print(f"spawn {i + 1}: ours {results['ours'][-1]:.2f} s, "
                  f"stock {results['stock'][-1]:.2f} s", flush=True)
        med_ours = statistics.median(results["ours"])
        med_stock = statistics.median(results["stock"])
        print(f"median login-to-lab-ready, {args.spawns} spawns each:")
        print(f"  ours (GatewaySpawner):        {med_ours:.2f} s")
        print(f"  stock batchspawner SlurmSpawner: {med_stock:.2f} s")
        print(f"  ratio ours/stock: {med_ours / med_stock:.2f} (target <= 1.10)")
        return 0
    finally:
        for hub in hubs:
            hub.stop()
        devstack.down()


if __name__ == "__main__":
    sys.exit(main())
