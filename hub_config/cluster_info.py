"""What the cluster has free right now, for the spawn form, without ever making it wait.

Partitions (free/total CPUs, memory, GPUs) from ``sinfo``, the user's
associations (accounts, their QoS, the default account) from ``sacctmgr``, and
the active reservations from ``scontrol show reservation``; each answer is
cached for ``ttl`` seconds.  A page load reads the cache and, if it is stale,
starts a refresh in the background; it never waits on the scheduler.  When the
scheduler does not answer, the form shows the last answer (or the site's
configured values) with a notice that says so.  A submission is checked
against the same data, read again first if it is stale (:meth:`ClusterInfo.access`).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from bioimage_gateway.session_request import (
    SLURM_NAME,
    ActiveReservation,
    Association,
    SlurmAccess,
)
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


@dataclass
class Cached:
    value: object = None
    fetched_at: float = 0.0
    tried_at: float = float("-inf")
    error: str | None = None
    refresh: asyncio.Future | None = None  # the query in flight, if any


@dataclass(frozen=True)
class Snapshot:
    """What the form shows: values, their age, and what could not be had."""

    partitions: dict[str, PartitionInfo] = field(default_factory=dict)
    access: SlurmAccess = SlurmAccess(user="")
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


def _names(text: str) -> frozenset[str]:
    """A Slurm list field ('a,b', '(null)'), keeping only names that could be options."""
    return frozenset(n for n in text.split(",") if SLURM_NAME.match(n))


def parse_reservations(text: str) -> list[ActiveReservation]:
    """The active reservations in ``scontrol -o show reservation``."""
    out = []
    for line in text.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        name = fields.get("ReservationName", "")
        if not SLURM_NAME.match(name) or fields.get("State") != "ACTIVE":
            continue
        out.append(ActiveReservation(name, _names(fields.get("Users", "")),
                                     _names(fields.get("Accounts", "")),
                                     fields.get("EndTime", "")))
    return out


# Per user: the default account and the associations (one per account).
UserAssociations = tuple[str | None, tuple[Association, ...]]


def parse_associations(text: str) -> dict[str, UserAssociations]:
    """``sacctmgr -n -P show user withassoc format=User,DefaultAccount,Account,QOS,DefaultQOS``
    -> user: (default account, associations: the default account's first, then by name).
    Names that could not be sbatch options are left out."""
    out: dict[str, tuple[str | None, list[Association]]] = {}
    for line in text.splitlines():
        user, default, account, qos, default_qos = (line.split("|") + [""] * 5)[:5]
        if not user or not SLURM_NAME.match(account):  # a user without an association here
            continue
        entry = out.setdefault(user, (default if SLURM_NAME.match(default) else None, []))
        if all(a.account != account for a in entry[1]):
            names = tuple(dict.fromkeys(n for n in qos.split(",") if SLURM_NAME.match(n)))
            entry[1].append(Association(account, names, default_qos if default_qos in names
                                        else None))
    return {
        user: (default, tuple(sorted(assocs, key=lambda a: (a.account != default, a.account))))
        for user, (default, assocs) in out.items()
    }


_CLUSTER_NAME = re.compile(r"^\s*ClusterName\s*=\s*(\S+)", re.IGNORECASE | re.MULTILINE)


def cluster_name(conf: Path) -> str | None:
    """The ClusterName of a slurm.conf (None if it cannot be read)."""
    try:
        match = _CLUSTER_NAME.search(Path(conf).read_text(errors="replace"))
    except OSError:
        return None
    return match.group(1).lower() if match else None


class ClusterInfo:
    """Cached, never-blocking view of the cluster for the spawn form (one per hub:
    ``shared.SharedServices``)."""

    def __init__(self, client: SlurmClient, ttl: float = 30, timeout: float = 5):
        self.client = client
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[str, Cached] = {}
        # One slurmdbd often serves several clusters: only this one's associations count.
        self.cluster = cluster_name(client.conf)

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
    async def _associations(self) -> dict[str, UserAssociations]:
        # `show user withassoc` gives each user's default account on this cluster as well.
        where = ["where", f"cluster={self.cluster}"] if self.cluster else []
        text = await self._run([str(self.client.bin_dir / "sacctmgr"), "-n", "-P", "show",
                                "user", "withassoc", *where,
                                "format=User,DefaultAccount,Account,QOS,DefaultQOS"])
        return parse_associations(text)

    async def _reservations(self) -> list[ActiveReservation]:
        text = await self._run([str(self.client.bin_dir / "scontrol"), "-o", "show",
                                "reservation"])
        if "No reservations" in text:
            return []
        return parse_reservations(text)

    async def _refresh(self, key: str, fetch) -> None:
        cached = self._cache.setdefault(key, Cached())
        cached.tried_at = time.monotonic()
        try:
            cached.value = await fetch()
            cached.fetched_at = time.monotonic()
            cached.error = None
        except Exception as exc:  # noqa: BLE001 - any failure degrades to cached values
            cached.error = str(exc) or type(exc).__name__

    def _schedule(self, key: str, fetch) -> Cached:
        """The cached entry; a refresh is started if it is stale and none is in flight.
        A failed query is tried again a TTL later, not at every page load."""
        cached = self._cache.setdefault(key, Cached())
        if time.monotonic() - cached.tried_at > self.ttl and cached.refresh is None:
            cached.refresh = asyncio.ensure_future(self._refresh(key, fetch))
            cached.refresh.add_done_callback(lambda _: setattr(cached, "refresh", None))
        return cached

    async def _current(self, key: str, fetch) -> Cached:
        """The entry, once a refresh of a stale one (or the one in flight) has ended."""
        cached = self._schedule(key, fetch)
        if cached.refresh is not None:
            # Shielded: a submission given up on does not cancel the query others wait for.
            await asyncio.shield(cached.refresh)
        return cached

    async def warm(self, username: str | None = None) -> None:
        """Fetch everything now (used at hub start and by tests)."""
        await self._refresh("partitions", self._partitions)
        await self._refresh("associations", self._associations)
        await self._refresh("reservations", self._reservations)

    @staticmethod
    def _access(username: str, associations: Cached, reservations: Cached) -> SlurmAccess:
        """One user's part of the cached answers (None for what was never read)."""
        default, mine = None, None
        if associations.value is not None:
            # Once read, a user with no association has none (Slurm would refuse their jobs).
            default, mine = associations.value.get(username, (None, ()))
        active = tuple(reservations.value) if reservations.value is not None else None
        return SlurmAccess(username, mine, default, active)

    async def access(self, username: str) -> SlurmAccess:
        """What Slurm says ``username`` may charge a session to, for checking a submission:
        the cached answers, read again first if they are older than the TTL (a query takes
        at most ``timeout``; when it fails, the last answer counts)."""
        associations, reservations = await asyncio.gather(
            self._current("associations", self._associations),
            self._current("reservations", self._reservations),
        )
        return self._access(username, associations, reservations)

    def snapshot(self, username: str) -> Snapshot:
        """The cached view, scheduling refreshes of whatever is stale; never waits."""
        notices = []
        parts = self._schedule("partitions", self._partitions)
        assoc = self._schedule("associations", self._associations)
        res = self._schedule("reservations", self._reservations)
        if parts.error:
            notices.append(
                "Live cluster data is unavailable (Slurm did not answer: "
                f"{parts.error}); " + ("showing values from "
                f"{time.monotonic() - parts.fetched_at:.0f} s ago." if parts.value
                else "showing the site's configured limits.")
            )
        elif parts.value is None:
            notices.append("Live cluster data is being fetched; reload in a moment.")
        # Sites without slurmdbd have no associations to read: that is not news.
        no_accounting = assoc.error and "accounting_storage" in assoc.error
        if assoc.error and not no_accounting:
            notices.append(
                f"Your Slurm accounts could not be read from accounting ({assoc.error}); "
                + (f"showing those read {time.monotonic() - assoc.fetched_at:.0f} s ago."
                   if assoc.value is not None
                   else "offering the profiles' own and your default account.")
            )
        return Snapshot(partitions=parts.value or {},
                        access=self._access(username, assoc, res), notices=notices)
