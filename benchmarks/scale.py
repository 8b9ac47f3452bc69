"""The hub at facility scale, in one run: scheduler load, logins, a slurmctld outage.

    /opt/bioimage-gateway/venv/bin/python benchmarks/scale.py [--sessions 10,50,200]
    /opt/bioimage-gateway/venv/bin/python benchmarks/scale.py --only logins \
        [--hubs stock,ours] [--cycles 5]

1. Scheduler calls per poll interval with N sessions, ours vs. stock
   batchspawner SlurmSpawner on the same local Slurm.  Sessions are real Slurm
   jobs started through each hub's own spawner, batch script and port
   callback; the job runs a minimal HTTP server (devstack/tiny_session.py)
   instead of JupyterLab, so that 2 x 200 sessions fit on a 2-core machine.
   Every Slurm command either hub runs goes through a logging wrapper, so the
   counts are the commands actually executed.  Both hubs poll every
   --interval seconds.
2. --logins users signing in through the identity provider and landing on the
   spawn form, on our hub and on stock JupyterHub with oauthenticator's
   GenericOAuthenticator against the same identity provider
   (benchmarks/stock_oauth_config.py), in the same run: after a first sign-in on
   each hub, --cycles cycles of one round per hub for each of --ramps (seconds
   over which the users arrive, 0 meaning all at the same instant), the hubs'
   order turning from round to round.  Per round: the hub's p50/p95 response
   time (client side and the hub's own, per route), errors, and the CPU each
   process used (benchmarks/login_burst.py); then per cycle the ratio of ours to
   stock of the p95 of hub responses, its median and the worst (goal <= 1.05).
   --hubs also takes ours with one setting switched off (ours-no-wal,
   ours-no-gc-freeze), compared with the first hub named.
3. slurmctld stopped for --outage seconds with 20 running sessions: sessions lost.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pwd
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml
from login_burst import LoginHub, paired_rounds, ratio_lines

from bioimage_gateway.devstack.demo import HubProcess, hub_config_path
from bioimage_gateway.devstack.hubclient import HubClient
from bioimage_gateway.devstack.processes import free_port, read_pid, run
from bioimage_gateway.devstack.slurm_calls import QUERY_COMMANDS, count_calls, counting_bin_dir
from bioimage_gateway.devstack.stack import Devstack, ensure_unix_user, give_to, hub_urls
from bioimage_gateway.settings import SlurmSettings

LOAD_USER = "gwl{:03d}"
STOCK_BASE = Path(__file__).with_name("stock_batchspawner_config.py")
STOCK_SIGN_IN = Path(__file__).with_name("stock_oauth_config.py")
# The hubs the sign-in comparison can run: stock JupyterHub + GenericOAuthenticator, ours as
# shipped, and ours with one hub setting switched off.
SIGN_IN_HUBS: dict[str, dict | None] = {
    "stock": None,
    "ours": {},
    "ours-no-wal": {"sqlite_wal": False},
    "ours-no-gc-freeze": {"gc_freeze": False},
}
SIGN_IN_GOAL = 1.05  # ours/stock, p95 of hub responses: ours must not be slower

PROFILE_PRELUDE = """
# --profile: where the hub's one thread spends its time, written when the hub stops.
import atexit, cProfile, os
_profile = cProfile.Profile()
_profile.enable()
atexit.register(_profile.dump_stats, os.path.join(os.getcwd(), "hub.prof"))
load_subconfig({config!r})
"""

OURS_CONFIG = """
load_subconfig({base!r})
import sys
# The benchmark creates the load users and starts their sessions with a service's token: the
# gateway's admin role does not create users or act as them.
c.JupyterHub.services = [*c.JupyterHub.services, {{"name": "scale-benchmark", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [*c.JupyterHub.load_roles, {{
    "name": "scale-benchmark", "services": ["scale-benchmark"],
    "scopes": ["admin:users", "admin:servers", "list:users", "read:users", "read:servers",
               "admin:groups"]}}]
c.Spawner.cmd = [sys.executable, "-m", "bioimage_gateway.devstack.tiny_session"]
c.Spawner.poll_interval = {interval}
c.Spawner.http_timeout = 120
c.Spawner.start_timeout = 600
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
"""

STOCK_CONFIG = """
load_subconfig({base!r})
bin_dir = {bin_dir!r}
c.Authenticator.admin_users = {{"ada"}}
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
c.SlurmSpawner.batch_submit_cmd = bin_dir + "/sbatch --parsable"
c.SlurmSpawner.batch_query_cmd = bin_dir + "/squeue -h -j {{job_id}} -o '%T %B'"
c.SlurmSpawner.batch_cancel_cmd = bin_dir + "/scancel {{job_id}}"
c.Spawner.cmd = [{tiny!r}]
c.Spawner.poll_interval = {interval}
c.Spawner.http_timeout = 120
c.Spawner.start_timeout = 600
"""


@dataclass
class OidcClient:
    """A hub of the sign-in comparison on a port of its own, and its client at the IdP."""

    hub: str
    port: int = field(default_factory=free_port)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def client_id(self) -> str:
        return f"scale-{self.hub}"

    def registration(self) -> dict:
        urls = hub_urls(self.port)
        return {"client_id": self.client_id, "client_secret": self.secret,
                "redirect_uris": [urls["callback"]],
                "post_logout_redirect_uris": [urls["after_logout"]]}

    def secret_file(self, devstack: Devstack) -> Path:
        """The secret in a file of the hub's account alone."""
        path = devstack.state_dir / f"{self.hub}-oidc-client-secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.secret + "\n")
        give_to(pwd.getpwnam(devstack.record()["hub_account"]), path)
        return path


def hub_settings(devstack: Devstack, name: str, bin_dir: Path, interval: float,
                 users_file: Path | None = None, client: OidcClient | None = None,
                 hub_changes: dict | None = None) -> Path:
    """A hub on the stack; with the stack's own port (registered at the IdP) unless it
    signs users in from a users file or through a client of its own."""
    settings = yaml.safe_load(Path(devstack.record()["gateway_yaml"]).read_text())
    port = client.port if client else free_port() if users_file else None
    if port:
        settings["hub"].update(port=port, public_url=f"http://127.0.0.1:{port}")
    if client:
        settings["auth"].update(client_id=client.client_id,
                                client_secret_file=str(client.secret_file(devstack)))
    settings["hub"].update(api_port=free_port(), proxy_api_port=free_port(),
                           data_dir=str(devstack.state_dir / name), **(hub_changes or {}))
    # The spawn form's live data as a site has it (the stack's own hub refreshes it every
    # 2 s, for tests that change the cluster under it).
    settings["slurm"].update(bin_dir=str(bin_dir), poll_interval=interval, start_poll_interval=1,
                             live_data_ttl=SlurmSettings.model_fields["live_data_ttl"].default)
    if users_file:
        settings["auth"] = {"provider": "dummy", "users_file": str(users_file)}
    path = devstack.state_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    (devstack.state_dir / name).mkdir(exist_ok=True)
    return path


def admin_client(hub: HubProcess, password: str = "ada-demo", token: str | None = None) -> HubClient:
    """ada's token on the stock hub (a JupyterHub admin there); the benchmark service's on ours."""
    client = HubClient(hub.url, "ada", password)
    if token is None:
        client.login()
        token = client.new_token("scale benchmark")
    client.http.headers["Authorization"] = f"token {token}"
    return client


def start_sessions(admin: HubClient, users: list[str], options: dict) -> None:
    for user in users:
        # 409: the user exists already (signed in before, or an earlier round).
        response = admin.api("POST", f"/users/{user}")
        assert response.status_code in (201, 409), response.text
    if "profile" in options:  # ours: in the group the IdP gives them at sign-in, the CPU profile's
        response = admin.api("POST", "/groups/imaging/users", json={"users": users})
        assert response.status_code == 200, response.text
    def start(user: str) -> str | None:
        response = admin.api("POST", f"/users/{user}/server", json=options, timeout=120)
        # 400: already running (from the previous, smaller N).
        if response.status_code in (201, 202, 400):
            return None
        return f"{user}: {response.status_code} {response.text[:300]}"

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        failures = [f for f in pool.map(start, users) if f]
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(users)} sessions failed to start; "
                           f"first: {failures[0]}")
    deadline = time.monotonic() + 900
    waiting = set(users)
    while waiting and time.monotonic() < deadline:
        ready = {u["name"] for u in admin.api("GET", "/users", params={"state": "ready"}).json()}
        waiting -= ready
        if waiting:
            time.sleep(2)
    if waiting:
        raise RuntimeError(f"{len(waiting)} sessions never became ready: {sorted(waiting)[:5]}...")


def scheduler_load(hubs: dict, sizes: list[int], users: list[str], interval: float,
                   window: float) -> list[dict]:
    rows = []
    for n in sizes:
        for name, (hub, admin, log, options) in hubs.items():
            start_sessions(admin, users[:n], options)
        time.sleep(interval)  # let start-up polls settle
        since = time.time()
        time.sleep(window)
        until = time.time()
        row = {"sessions": n}
        for name, (hub, admin, log, options) in hubs.items():
            counts = count_calls(log, since, until)
            row[name] = sum(counts[c] for c in QUERY_COMMANDS) / (window / interval)
        rows.append(row)
        print(f"  N={n:4d}: scheduler queries per {interval:.0f} s interval: "
              f"ours {row['ours']:.1f}, stock {row['stock']:.1f}", flush=True)
    return rows


def profiled(config: Path, state_dir: Path) -> Path:
    """A configuration that loads ``config`` in a hub run under cProfile (its working
    folder, the hub's data folder, gets ``hub.prof``)."""
    path = state_dir / f"profiled-{config.name}"
    path.write_text(PROFILE_PRELUDE.format(config=str(config)))
    path.chmod(0o644)
    return path


def sign_in_hub(devstack: Devstack, name: str, config: Path, client: OidcClient,
                interval: float) -> HubProcess:
    """A hub of the sign-in comparison other than ours, not started yet."""
    folder = f"signin-{name}"  # not the scheduler comparison's "stock"
    return HubProcess(
        hub_settings(devstack, folder, devstack.state_dir / "bin-ours", interval,
                     client=client, hub_changes=SIGN_IN_HUBS[name]),
        devstack.state_dir, devstack.state_dir / f"{folder}.log", config_file=config,
        run_as=devstack.record()["hub_account"], network=devstack.network())


def login_comparison(devstack: Devstack, hubs: dict[str, HubProcess], users: list[str],
                     ramps: list[float], cycles: int, first_ramp: float) -> list[str]:
    """Paired sign-in rounds on ``hubs`` (login_burst.paired_rounds); the ratio lines,
    against the first hub, or ours against stock."""
    idp = devstack.record()["pids"]["idp"]
    login_hubs = [LoginHub(name, hub.url, hub.log_path,
                           {"hub": hub.proc.pid, "proxy": read_pid(hub.data_dir / "proxy.pid"),
                            "IdP": idp})
                  for name, hub in hubs.items()]
    print(f"  each user, in its own browser: hub login page, IdP sign-in, the hub's OAuth "
          f"callback, landing on the spawn form (no CPU pinning; the load generator, IdP, "
          f"proxies and hubs share the machine's {os.cpu_count()} cores)", flush=True)
    rounds = paired_rounds(login_hubs, users, lambda user: f"{user}-load", ramps, cycles,
                           first_ramp, show=lambda line: print(line, flush=True))
    names = list(hubs)
    baseline = "stock" if "stock" in names else names[0]
    return ratio_lines(rounds, baseline, SIGN_IN_GOAL if baseline == "stock" else None)


def outage(devstack: Devstack, admin: HubClient, hub: HubProcess, users: list[str],
           seconds: float) -> int:
    devstack.restart_controller(down_for=seconds)
    time.sleep(5)
    ready = {u["name"] for u in admin.api("GET", "/users", params={"state": "ready"}).json()}
    lost = 0
    for user in users:
        answer = requests.get(f"{hub.url}/user/{user}/", timeout=30)
        if user not in ready or answer.status_code != 200 or "tiny session" not in answer.text:
            lost += 1
    return lost


def main() -> int:
    # SIGTERM (timeout, kill) still runs the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="10,50,200")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--ramps", default="10,0",
                        help="login rounds of each cycle: seconds over which the users arrive "
                        "(0: at once)")
    parser.add_argument("--first-ramp", type=float, default=10.0,
                        help="seconds over which the users arrive for their first sign-in")
    parser.add_argument("--cycles", type=int, default=5,
                        help="login cycles: one round per hub and ramp in each")
    parser.add_argument("--hubs", default="stock,ours",
                        help="hubs of the sign-in comparison, the first the one compared "
                        f"with: {', '.join(SIGN_IN_HUBS)}")
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run the hubs of the sign-in comparison under cProfile (slower: to "
                        "find where the time goes, not for the figures); profiles go to DIR")
    parser.add_argument("--only", choices=["logins"],
                        help="run only this part (no stock hub, scheduler rounds or outage)")
    args = parser.parse_args()
    sign_in_names = args.hubs.split(",")
    unknown = [n for n in sign_in_names if n not in SIGN_IN_HUBS]
    if unknown or len(set(sign_in_names)) != len(sign_in_names) or len(sign_in_names) < 2:
        parser.error(f"--hubs: two or more of {', '.join(SIGN_IN_HUBS)}, each once "
                     f"(not {args.hubs!r})")
    sizes = [int(n) for n in args.sessions.split(",")]
    ramps = [float(r) for r in args.ramps.split(",")]
    n_users = max(max(sizes), args.logins, 20)

    state_dir = Path(tempfile.mkdtemp(prefix="gw-scale-", dir="/tmp"))
    users = [LOAD_USER.format(i) for i in range(n_users)]
    print(f"creating {n_users} Unix users for the load...", flush=True)
    for user in users:
        ensure_unix_user(user)
    load_entries = [{"username": u, "password": f"{u}-load", "groups": ["imaging"],
                     "name": u, "email": f"{u}@example.org", "email_verified": True}
                    for u in users]
    devstack = Devstack(state_dir)
    hubs_started: list[HubProcess] = []
    # Each hub of the sign-in comparison but ours (the stack's port) is a client of the IdP.
    clients = {name: OidcClient(name) for name in sign_in_names if name != "ours"}
    try:
        devstack.up(node_cpus=max(64, max(sizes)), idp_users=load_entries,
                    idp_clients=[client.registration() for client in clients.values()])
        ours_log = counting_bin_dir(state_dir / "bin-ours")
        stock_log = counting_bin_dir(state_dir / "bin-stock")
        users_file = state_dir / "load-users.json"
        users_file.write_text(json.dumps(
            [{"username": "ada", "password": "ada-demo", "groups": []}] + load_entries))
        tiny = state_dir / "tiny-session"
        tiny.write_text(f"#!{sys.executable}\nfrom bioimage_gateway.devstack.tiny_session "
                        "import main\nraise SystemExit(main())\n")
        tiny.chmod(0o755)

        ours_cfg = state_dir / "ours_config.py"
        service_token = secrets.token_hex(32)
        ours_cfg.write_text(OURS_CONFIG.format(base=str(hub_config_path()), token=service_token,
                                               interval=args.interval))
        ours_cfg.chmod(0o644)

        def config_of(name: str) -> Path:
            config = STOCK_SIGN_IN if SIGN_IN_HUBS[name] is None else ours_cfg
            return profiled(config, state_dir) if args.profile else config

        # Ours as a site runs it (the hub account, the shipped sudo rules); stock as root, whose
        # `sudo -E` those rules refuse.  Both on the service host, sessions on the nodes.
        ours = HubProcess(
            hub_settings(devstack, "ours", state_dir / "bin-ours", args.interval),
            state_dir, state_dir / "ours.log", config_file=config_of("ours"),
            run_as=devstack.record()["hub_account"], network=devstack.network())
        stock_cfg = state_dir / "stock_config.py"
        stock_cfg.write_text(STOCK_CONFIG.format(base=str(STOCK_BASE),
                                                 bin_dir=str(state_dir / "bin-stock"),
                                                 tiny=str(tiny), interval=args.interval))

        def compare_logins() -> list[str]:
            """Ours (running) and the other hubs of the comparison, started for it alone."""
            others = {name: sign_in_hub(devstack, name, config_of(name), client, args.interval)
                      for name, client in clients.items()}
            for hub in others.values():
                hubs_started.append(hub)
                hub.start()
            print(f"\n{args.logins} users signing in (identity provider) and opening the "
                  f"spawn form, on {', '.join(sign_in_names)} in turn:", flush=True)
            try:
                return login_comparison(
                    devstack, {name: others.get(name, ours) for name in sign_in_names},
                    users[: args.logins], ramps, args.cycles, args.first_ramp)
            finally:
                for hub in others.values():
                    hub.stop()

        if args.only == "logins":
            ours.start()
            hubs_started.append(ours)
            login_lines = compare_logins()
            print(f"\nSummary ({sys.executable} {' '.join(sys.argv)})")
            for line in login_lines:
                print(f"  {line}")
            return 0
        stock = HubProcess(
            hub_settings(devstack, "stock", state_dir / "bin-stock", args.interval,
                         users_file=users_file),
            state_dir, state_dir / "stock.log", config_file=stock_cfg, network=devstack.network())
        for hub in (ours, stock):
            hub.start()
            hubs_started.append(hub)

        print("\n1. Sign-ins:", flush=True)
        login_lines = compare_logins()

        print(f"\n2. Scheduler queries per poll interval ({args.interval:.0f} s), "
              f"{args.window:.0f} s windows:", flush=True)
        ours_admin = admin_client(ours, token=service_token)
        stock_admin = admin_client(stock)
        hubs = {
            "ours": (ours, ours_admin, ours_log,
                     {"profile": "cpu", "cpus": 1, "memory_gb": 1, "walltime_hours": 1}),
            "stock": (stock, stock_admin, stock_log, {}),
        }
        rows = scheduler_load(hubs, sizes, users, args.interval, args.window)

        print(f"\n3. slurmctld stopped for {args.outage:.0f} s with 20 running sessions:",
              flush=True)
        start_sessions(ours_admin, users[:20], hubs["ours"][3])
        lost = outage(devstack, ours_admin, ours, users[:20], args.outage)
        print(f"  sessions lost: {lost} of 20")

        print("\nSummary")
        for row in rows:
            ratio = row["ours"] / row["stock"] if row["stock"] else float("nan")
            print(f"  N={row['sessions']}: ours {row['ours']:.1f} vs stock {row['stock']:.1f} "
                  f"queries/interval (ratio {ratio:.3f}; target 1 per interval whatever N)")
        for line in login_lines:
            print(f"  logins: {line}")
        print(f"  slurmctld outage: {lost} sessions lost (target 0)")
        return 0
    finally:
        try:
            for hub in hubs_started:
                hub.stop()
                if args.profile and (hub.data_dir / "hub.prof").exists():
                    args.profile.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(hub.data_dir / "hub.prof",
                                    args.profile / f"{hub.data_dir.name}.prof")
            devstack.down()
        finally:
            for user in users:
                run(["userdel", "--remove", user], check=False)


if __name__ == "__main__":
    sys.exit(main())
