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

from bioimage_gateway.slurm import SlurmClient, run_argv


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


@dataclass(frozen=True)
class ActiveReservation:
    """An active reservation and who may use it (its users, or members of its accounts)."""

    reservation: Reservation
    users: frozenset[str]
    accounts: frozenset[str]

    def open_to(self, username: str, accounts) -> bool:
        return username in self.users or bool(self.accounts & set(accounts))


def parse_reservations(text: str) -> list[ActiveReservation]:
    """The active reservations in ``scontrol -o show reservation``."""
    out = []
    for line in text.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if "ReservationName" not in fields or fields.get("State") != "ACTIVE":
            continue
        out.append(ActiveReservation(
            Reservation(fields["ReservationName"], fields.get("StartTime", ""),
                        fields.get("EndTime", ""), fields.get("PartitionName", "(null)")),
            frozenset(filter(None, fields.get("Users", "").split(","))),
            frozenset(filter(None, fields.get("Accounts", "").split(",")))))
    return out


def parse_associations(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """``sacctmgr -n -P show assoc format=User,Account,QOS`` -> user: (accounts, QoS), in order."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for line in text.splitlines():
        user, account, qos = (line.split("|") + ["", ""])[:3]
        if not user:  # an account's own association, not a user's
            continue
        accounts, names = out.setdefault(user, ([], []))
        if account and account not in accounts:
            accounts.append(account)
        for name in filter(None, qos.split(",")):
            if name not in names:
                names.append(name)
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

    # Associations and reservations are read for every user at once: a class opening the
    # form together costs the scheduler one sacctmgr and one scontrol per interval, not one
    # each per student.
    async def _associations(self) -> dict[str, tuple[list[str], list[str]]]:
        where = [f"cluster={self.cluster}"] if self.cluster else []
        text = await self._run([str(self.client.bin_dir / "sacctmgr"), "-n", "-P", "show",
                                "assoc", *where, "format=User,Account,QOS"])
        return parse_associations(text)

    async def _reservations(self) -> list[ActiveReservation]:
        text = await self._run([str(self.client.bin_dir / "scontrol"), "-o", "show",
                                "reservation"])
        if "No reservations" in text:
            return []
        return parse_reservations(text)

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

    async def warm(self, username: str | None = None) -> None:
        """Fetch everything now (used at hub start and by tests)."""
        await self._refresh("partitions", self._partitions)
        await self._refresh("associations", self._associations)
        await self._refresh("reservations", self._reservations)

    def snapshot(self, username: str) -> Snapshot:
        """The cached view, scheduling refreshes of whatever is stale; never waits."""
        notices = []
        parts = self._schedule("partitions", self._partitions)
        every = self._schedule("associations", self._associations)
        res = self._schedule("reservations", self._reservations)
        # Once read, a user with no association has none (Slurm would refuse their jobs).
        assoc = Cached(every.value.get(username, ([], [])) if every.value is not None else None,
                       every.fetched_at, every.error)
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
        reservations = [r.reservation for r in res.value or [] if r.open_to(username, accounts)]
        return Snapshot(partitions=parts.value or {}, accounts=list(accounts), qos=list(qos),
                        reservations=reservations, notices=notices)
