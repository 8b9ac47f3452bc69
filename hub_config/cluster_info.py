"""What the cluster has free right now, for the spawn form, without ever making it wait.

Partitions (free/total CPUs, memory, GPUs) from ``sinfo``, the user's
accounts and QoS from ``sacctmgr``, and the reservations they may use from
``scontrol show reservation``; each answer is cached for ``ttl`` seconds.  A
page load reads the cache and, if it is stale, starts a refresh in the
background; it never waits on the scheduler.  When the scheduler does not
answer, the form shows the last answer (or the site's configured values) with
a notice that says so.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from bioimage_gateway.slurm import SlurmClient, check_username, run_argv


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    available: bool
    cpus_free: int
    cpus_total: int
    memory_mb: int
    gpus_free: int
    gpus_total: int


@dataclass(frozen=True)
class Reservation:
    name: str
    start: str
    end: str
    partition: str


@dataclass
class Cached:
    value: object = None
    fetched_at: float = 0.0
    error: str | None = None
    refreshing: bool = False


@dataclass(frozen=True)
class Snapshot:
    """What the form shows: values, their age, and what could not be had."""

    partitions: dict[str, PartitionInfo] = field(default_factory=dict)
    accounts: list[str] = field(default_factory=list)
    qos: list[str] = field(default_factory=list)
    reservations: list[Reservation] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def _gpus(gres: str) -> int:
    """'gpu:a100:4(S:0-1),tmpdisk:100' -> 4"""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts and parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def parse_sinfo(text: str) -> dict[str, PartitionInfo]:
    """Rows of ``sinfo -O Partition|Available|CPUsState|Memory|Gres|Nodes|GresUsed``,
    summed per partition."""
    sums: dict[str, dict] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, avail, cpus, mem, gres, nodes, used = (
            part.strip() for part in (line.split("|") + [""] * 7)[:7]
        )
        _alloc, idle, _other, total = (int(x) for x in cpus.split("/"))
        n_nodes = int(nodes or 1)
        entry = sums.setdefault(name, {"available": avail == "up", "free": 0, "total": 0,
                                       "mem": 0, "gpus": 0, "gpus_used": 0})
        entry["free"] += idle
        entry["total"] += total
        entry["mem"] = max(entry["mem"], int(mem.rstrip("+") or 0))
        entry["gpus"] += _gpus(gres) * n_nodes
        entry["gpus_used"] += _gpus(used)
    return {
        name: PartitionInfo(name, e["available"], e["free"], e["total"], e["mem"],
                            max(0, e["gpus"] - e["gpus_used"]), e["gpus"])
        for name, e in sums.items()
    }


def parse_reservations(text: str, username: str, accounts: list[str]) -> list[Reservation]:
    out = []
    for line in text.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if "ReservationName" not in fields or fields.get("State") != "ACTIVE":
            continue
        users = set(filter(None, fields.get("Users", "").split(",")))
        res_accounts = set(filter(None, fields.get("Accounts", "").split(",")))
        if username in users or res_accounts & set(accounts):
            out.append(Reservation(fields["ReservationName"], fields.get("StartTime", ""),
                                   fields.get("EndTime", ""),
                                   fields.get("PartitionName", "(null)")))
    return out


_CLUSTER_NAME = re.compile(r"^\s*ClusterName\s*=\s*(\S+)", re.IGNORECASE | re.MULTILINE)


def cluster_name(conf: Path) -> str | None:
    """The ClusterName of a slurm.conf (None if it cannot be read)."""
    try:
        match = _CLUSTER_NAME.search(Path(conf).read_text(errors="replace"))
    except OSError:
        return None
    return match.group(1).lower() if match else None


class ClusterInfo:
    """Cached, never-blocking view of the cluster for the spawn form."""

    _shared: dict[tuple, "ClusterInfo"] = {}

    def __init__(self, client: SlurmClient, ttl: float = 30, timeout: float = 5,
                 configured_accounts=(), configured_qos=()):
        self.client = client
        self.ttl = ttl
        self.timeout = timeout
        self.configured_accounts = list(configured_accounts)
        self.configured_qos = list(configured_qos)
        self._cache: dict[str, Cached] = {}
        # One slurmdbd often serves several clusters: only this one's associations count.
        self.cluster = cluster_name(client.conf)

    @classmethod
    def shared(cls, client: SlurmClient, **kwargs) -> "ClusterInfo":
        key = (str(client.conf), str(client.bin_dir))
        if key not in cls._shared:
            cls._shared[key] = cls(client, **kwargs)
        return cls._shared[key]

    async def _run(self, argv: list[str]) -> str:
        result = await run_argv(argv, env=self.client.env, timeout=self.timeout)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip()
                               else f"{argv[0]} exited {result.returncode}")
        return result.stdout

    async def _partitions(self) -> dict[str, PartitionInfo]:
        text = await self._run([
            str(self.client.bin_dir / "sinfo"), "-h", "-O",
            "PartitionName:|,Available:|,CPUsState:|,Memory:|,Gres:|,Nodes:|,GresUsed:|",
        ])
        return parse_sinfo(text)

    async def _associations(self, username: str) -> tuple[list[str], list[str]]:
        where = [f"cluster={self.cluster}"] if self.cluster else []
        # A checked name: sacctmgr would read "a,b" as two users.
        text = await self._run([str(self.client.bin_dir / "sacctmgr"), "-n", "-P", "show",
                                "assoc", f"user={check_username(username)}", *where,
                                "format=Account,QOS"])
        accounts, qos = [], []
        for line in text.splitlines():
            account, q = (line.split("|") + [""])[:2]
            if account and account not in accounts:
                accounts.append(account)
            for name in filter(None, q.split(",")):
                if name not in qos:
                    qos.append(name)
        return accounts, qos

    async def _reservations(self, username: str) -> list[Reservation]:
        accounts = self._value(f"assoc:{username}", ([], []))[0]
        text = await self._run([str(self.client.bin_dir / "scontrol"), "-o", "show",
                                "reservation"])
        if "No reservations" in text:
            return []
        return parse_reservations(text, username, accounts)

    def _value(self, key: str, default):
        cached = self._cache.get(key)
        return cached.value if cached and cached.value is not None else default

    async def _refresh(self, key: str, fetch) -> None:
        cached = self._cache.setdefault(key, Cached())
        try:
            cached.value = await fetch()
            cached.fetched_at = time.monotonic()
            cached.error = None
        except Exception as exc:  # noqa: BLE001 - any failure degrades to cached values
            cached.error = str(exc) or type(exc).__name__
        finally:
            cached.refreshing = False

    def _schedule(self, key: str, fetch) -> Cached:
        cached = self._cache.setdefault(key, Cached())
        stale = time.monotonic() - cached.fetched_at > self.ttl
        if stale and not cached.refreshing:
            cached.refreshing = True
            asyncio.ensure_future(self._refresh(key, fetch))
        return cached

    async def warm(self, username: str) -> None:
        """Fetch everything now (used at hub start and by tests)."""
        await self._refresh("partitions", self._partitions)
        await self._refresh(f"assoc:{username}", lambda: self._associations(username))
        await self._refresh(f"res:{username}", lambda: self._reservations(username))

    def snapshot(self, username: str) -> Snapshot:
        """The cached view, scheduling refreshes of whatever is stale; never waits."""
        notices = []
        parts = self._schedule("partitions", self._partitions)
        assoc = self._schedule(f"assoc:{username}", lambda: self._associations(username))
        res = self._schedule(f"res:{username}", lambda: self._reservations(username))
        if parts.error:
            notices.append(
                "Live cluster data is unavailable (Slurm did not answer: "
                f"{parts.error}); " + ("showing values from "
                f"{time.monotonic() - parts.fetched_at:.0f} s ago." if parts.value
                else "showing the site's configured limits.")
            )
        elif parts.value is None:
            notices.append("Live cluster data is being fetched; reload in a moment.")
        accounts, qos = assoc.value if assoc.value else (self.configured_accounts,
                                                         self.configured_qos)
        # Sites without slurmdbd have no associations to read: that is not news.
        no_accounting = assoc.error and "accounting_storage" in assoc.error
        if assoc.error and not no_accounting:
            notices.append(
                f"Your Slurm accounts could not be read from accounting ({assoc.error}); "
                + (f"showing those read {time.monotonic() - assoc.fetched_at:.0f} s ago."
                   if assoc.value else "showing the site's configured accounts.")
            )
        return Snapshot(partitions=parts.value or {}, accounts=list(accounts), qos=list(qos),
                        reservations=res.value or [], notices=notices)
