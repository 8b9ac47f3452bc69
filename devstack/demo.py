"""``bioimage-gateway demo``: the local stack plus a hub, in the foreground.

Prints ``BioImage Gateway ready at URL`` once a user can log in; on SIGINT or
SIGTERM it stops the hub, cancels every session job and stops the stack,
leaving no process and no Slurm job behind.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from bioimage_gateway.settings import load_settings

from .processes import private_log, stop_pid, wait_until
from .stack import Devstack


def hub_config_path() -> Path:
    return Path(str(resources.files("bioimage_gateway.hub_config").joinpath("jupyterhub_config.py")))


def hub_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/hub/login", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class HubProcess:
    """JupyterHub configured from a gateway.yaml, as a child process running as ``run_as``
    (the stack's unprivileged hub account; None: this process's own user)."""

    def __init__(
        self,
        settings_path: Path,
        workdir: Path,
        log_path: Path | None = None,
        config_file: Path | None = None,
        run_as: str | None = None,
        network=None,
    ):
        self.settings_path = settings_path
        settings = load_settings(settings_path)
        self.url = settings.hub.public_url
        self.data_dir = Path(settings.hub.data_dir)
        self.workdir = workdir
        self.config_file = config_file or hub_config_path()
        self.log_path = log_path
        self.run_as = run_as
        # The stack's NodeNetwork: the hub then runs on the service host with the cluster's
        # hosts file, where node names resolve as through a site's DNS.
        self.network = network
        self.proc: subprocess.Popen | None = None

    def _account(self) -> dict:
        """How to start the hub as ``run_as``: its own data folder, where it also works."""
        if self.run_as is None:
            return {"cwd": self.workdir}
        account = pwd.getpwnam(self.run_as)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data_dir, account.pw_uid, account.pw_gid, follow_symlinks=False)
        options = {"cwd": self.data_dir,
                   "env": {"HOME": str(self.data_dir), "USER": account.pw_name, "LOGNAME": account.pw_name}}
        if self.network is None:  # else the service host's wrapper drops to the account
            options.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
        return options

    def start(self, timeout: float = 120) -> None:
        env = {**os.environ, "BIOIMAGE_GATEWAY_CONFIG": str(self.settings_path)}
        # configurable-http-proxy comes from npm's global prefix.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}:/usr/local/bin"
        account = self._account()
        env.update(account.pop("env", {}))
        out = private_log(self.log_path) if self.log_path else None
        argv = [sys.executable, "-m", "jupyterhub", "-f", str(self.config_file)]
        if self.network is not None:
            argv = self.network.service_argv(argv, self.run_as)
        self.proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, **account,
        )
        try:
            wait_until(lambda: hub_answers(self.url) or self.proc.poll() is not None, timeout, "the hub")
        except RuntimeError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"the hub exited with status {self.proc.returncode} at start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            stop_pid(self.proc.pid, timeout=30)
            self.proc.wait()


def run_demo(state_dir: Path, port: int) -> int:
    stack = Devstack(state_dir)
    stopping = threading.Event()

    def on_signal(signum, _frame):
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    hub = None
    try:
        record = stack.up(hub_port=port)
        hub = HubProcess(Path(record["gateway_yaml"]), stack.state_dir,
                         log_path=stack.state_dir / "hub.log", run_as=record["hub_account"],
                         network=stack.network())
        hub.start()
        print("Demo users (password): "
              + ", ".join(f"{u['username']} ({u['username']}-demo)" for u in record["users"]))
        print(f"State directory (root only): {stack.state_dir}")
        print(f"Hub log: {stack.state_dir / 'hub.log'}")
        print(f"BioImage Gateway ready at {record['hub_url']}", flush=True)
        while not stopping.is_set():
            if hub.proc.poll() is not None:
                print(f"the hub exited with status {hub.proc.returncode}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print("Stopping BioImage Gateway...", flush=True)
        return 0
    finally:
        if hub:
            hub.stop()
        stack.down()
