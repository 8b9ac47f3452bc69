"""What a user asked for, checked against the site's profiles and limits.

Everything a user submits (the spawn form, or JSON to the hub's REST API)
passes through :func:`resolve_request` before anything reaches Slurm.  The
result holds only integers, names from the site's settings and names Slurm
itself gave for this user (their associations, the reservations open to them),
so the batch script is built from trusted values alone.

Which account, QoS and reservation a session is charged to is the user's
choice among their own (:class:`ChargeChoices`); the profile gives the
default, and may lock any of the three (``locked:``) for sessions that must
run under a course's rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .limits import most_generous
from .settings import GatewaySettings, GroupLimits, Profile, SlurmSettings

_DIGITS = re.compile(r"^[0-9]{1,6}$")
# What Slurm names reaching sbatch may look like (\Z: "$" would let "name\n" through).
SLURM_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")

# The fields a user may set, with the profile attribute that bounds each one.
ADJUSTABLE = {
    "cpus": "cpus",
    "memory_gb": "memory_gb",
    "gpus": "gpus",
    "walltime_hours": "walltime_hours",
}
LIMIT_FOR = {
    "cpus": "max_cpus",
    "memory_gb": "max_memory_gb",
    "gpus": "max_gpus",
    "walltime_hours": "max_walltime_hours",
}
LABELS = {
    "cpus": "CPUs",
    "memory_gb": "memory (GB)",
    "gpus": "GPUs",
    "walltime_hours": "walltime (hours)",
}


# The Slurm names a user may choose for a session, as the options call them.
CHARGE_LABELS = {
    "account": "Slurm account",
    "qos": "QoS",
    "reservation": "reservation",
}


class InvalidRequest(ValueError):
    """A submitted option was refused; the message is shown to the user as is."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Association:
    """One of the user's Slurm associations on this cluster: an account and its QoS."""

    account: str
    qos: tuple[str, ...] = ()
    default_qos: str | None = None


@dataclass(frozen=True)
class ActiveReservation:
    """An active reservation and who may run in it: its users, or jobs charged to one of
    its accounts (Slurm's rule; a negated list, ``Users=-bob``, opens it to no one here)."""

    name: str
    users: frozenset[str] = frozenset()
    accounts: frozenset[str] = frozenset()
    end: str = ""

    def open_to(self, user: str, account: str | None) -> bool:
        return user in self.users or account in self.accounts


@dataclass(frozen=True)
class SlurmAccess:
    """What Slurm says one user may charge sessions to on this cluster.

    ``None`` where Slurm could not be asked (sacctmgr or scontrol never answered):
    then only the profile's own names and the site's lists in ``slurm:`` count.
    """

    user: str
    associations: tuple[Association, ...] | None = None
    default_account: str | None = None
    reservations: tuple[ActiveReservation, ...] | None = None

    def association(self, account: str | None) -> Association | None:
        account = account or self.default_account
        return next((a for a in self.associations or () if a.account == account), None)


def _unique(names: Iterable[str | None]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n))


def _shown(value: str) -> str:
    """A submitted value in a message: quoted, and cut short if it is long."""
    return repr(value if len(value) <= 64 else value[:64] + "...")


@dataclass(frozen=True)
class Charge:
    """What a session is charged to; None: no option, Slurm's default."""

    account: str | None = None
    qos: str | None = None
    reservation: str | None = None


@dataclass(frozen=True)
class ChargeChoices:
    """The accounts, QoS and reservations one user may choose for one profile, and
    which of them the form preselects.

    Where Slurm could not be asked, the profile's own names count, and the names in
    ``site`` besides (the site's lists in ``slurm:``, accepted from a user who knows
    them; the form does not offer them, most of them are other people's).
    """

    profile: Profile
    access: SlurmAccess
    site: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @classmethod
    def for_site(cls, profile: Profile, access: SlurmAccess,
                 slurm: SlurmSettings) -> "ChargeChoices":
        lists = {"account": slurm.accounts, "qos": slurm.qos, "reservation": slurm.reservations}
        return cls(profile, access, lists)

    def _unknown(self, key: str) -> list[str]:
        return _unique([getattr(self.profile, key), *self.site.get(key, ())])

    def accounts(self) -> list[str]:
        if self.access.associations is None:
            return self._unknown("account")
        return [a.account for a in self.access.associations]

    def qos(self, account: str | None) -> list[str]:
        """The QoS of the association of ``account`` (None: the user's default account)."""
        if self.access.associations is None:
            return self._unknown("qos")
        association = self.access.association(account)
        return list(association.qos) if association else []

    def reservations(self, account: str | None) -> list[str]:
        """The active reservations a session charged to ``account`` may run in."""
        if self.access.reservations is None:
            return self._unknown("reservation")
        user = self.access.user
        return [r.name for r in self.access.reservations if r.open_to(user, account)]

    def default_account(self) -> str | None:
        if "account" in self.profile.locked:
            return self.profile.account
        mine = self.accounts()
        for account in (self.profile.account, self.access.default_account):
            if account in mine:
                return account
        return None

    def default_qos(self, account: str | None) -> str | None:
        if "qos" in self.profile.locked:
            return self.profile.qos
        allowed = self.qos(account)
        association = self.access.association(account)
        for qos in (self.profile.qos, association.default_qos if association else None):
            if qos in allowed:
                return qos
        return None

    def default_reservation(self, account: str | None) -> str | None:
        if "reservation" in self.profile.locked:
            return self.profile.reservation
        wanted = self.profile.reservation
        return wanted if wanted in self.reservations(account) else None

    def resolve(self, raw: Mapping[str, Any]) -> Charge:
        """The submitted names, each checked; what was left out gets its default.

        An empty name asks for none: no ``--account``/``--qos`` (Slurm's default) and
        no reservation.
        """
        account = self._choose(raw, "account", self.accounts, self.default_account)
        qos = self._choose(raw, "qos", lambda: self.qos(account),
                           lambda: self.default_qos(account), account)
        reservation = self._choose(raw, "reservation", lambda: self.reservations(account),
                                   lambda: self.default_reservation(account), account)
        return Charge(account, qos, reservation)

    def _choose(self, raw, key: str, allowed, default, account: str | None = None) -> str | None:
        if key not in raw:
            return default()
        value = _single(raw, key)
        label = CHARGE_LABELS[key]
        if not isinstance(value, str):
            raise InvalidRequest(key, f"{label}: {value!r} is not a name")
        if key in self.profile.locked:
            fixed = getattr(self.profile, key)
            if value != (fixed or ""):
                always = repr(fixed) if fixed else "none"
                raise InvalidRequest(
                    key, f"{label} {_shown(value)}: {self.profile.display_name} sessions "
                    f"always use {always}")
            return fixed
        if value == "":
            return None
        names = allowed()
        if value not in names:
            raise InvalidRequest(key, self._refusal(key, value, names, account))
        return value

    def _refusal(self, key: str, value: str, names: list[str], account: str | None) -> str:
        label = CHARGE_LABELS[key]
        known = (self.access.reservations if key == "reservation"
                 else self.access.associations) is not None
        listed = ", ".join(names) or "none"
        if not known:
            return (f"{label} {_shown(value)} is not accepted while Slurm does not say which "
                    f"are yours (accepted now: {listed})")
        charged = account or self.access.default_account
        if key == "account":
            return f"{label} {_shown(value)} is not one of yours (yours: {listed})"
        if key == "qos":
            whose = f"your account {charged!r}" if charged else "you"
            return f"{label} {_shown(value)} is not allowed for {whose} (allowed: {listed})"
        return (f"{label} {_shown(value)} is not an active reservation open to you"
                + (f" with account {charged!r}" if charged else "") + f" (open: {listed})")


@dataclass(frozen=True)
class SessionRequest:
    profile: Profile
    cpus: int
    memory_gb: int
    gpus: int
    walltime_hours: int
    charge: Charge = Charge()

    def as_options(self) -> dict[str, Any]:
        """JSON-safe form, as stored in the hub's database (``user_options``).  A name left
        to Slurm is stored as "" so that checking the options again gives the same request."""
        return {
            "profile": self.profile.slug,
            "cpus": self.cpus,
            "memory_gb": self.memory_gb,
            "gpus": self.gpus,
            "walltime_hours": self.walltime_hours,
            "account": self.charge.account or "",
            "qos": self.charge.qos or "",
            "reservation": self.charge.reservation or "",
        }

    @property
    def walltime(self) -> str:
        """Slurm's ``--time`` format."""
        return f"{self.walltime_hours:d}:00:00"


def allowed_profiles(settings: GatewaySettings, groups: Iterable[str]) -> list[Profile]:
    groups = set(groups)
    return [p for p in settings.profiles if not p.groups or groups & set(p.groups)]


def effective_limits(settings: GatewaySettings, groups: Iterable[str]) -> GroupLimits:
    """The most generous limits among the user's groups, else the site default."""
    return most_generous(settings.group_limits, groups, settings.default_limits)


def _single(raw: Mapping[str, Any], key: str) -> Any:
    """Form posts arrive as lists of strings; JSON as plain values."""
    value = raw[key]
    if isinstance(value, list):
        if len(value) != 1:
            raise InvalidRequest(key, f"{key}: expected one value, got {len(value)}")
        value = value[0]
    return value


def _integer(key: str, value: Any) -> int:
    # bool is an int in Python; a JSON `true` is still not a number of CPUs.
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidRequest(key, f"{LABELS[key]}: {value!r} is not a whole number")
    if isinstance(value, str):
        if not _DIGITS.match(value.strip()):
            raise InvalidRequest(key, f"{LABELS[key]}: {value!r} is not a whole number")
        value = int(value.strip())
    return value


def resolve_request(
    settings: GatewaySettings, groups: Iterable[str], raw: Mapping[str, Any],
    access: SlurmAccess,
) -> SessionRequest:
    """Turn submitted options into a :class:`SessionRequest`, or raise InvalidRequest.

    ``access`` is what Slurm says the user may charge sessions to."""
    if not isinstance(raw, Mapping):
        raise InvalidRequest("", "options must be a mapping of names to values")
    groups = list(groups)
    unknown = sorted(str(k) for k in raw if k not in ("profile", *ADJUSTABLE, *CHARGE_LABELS))
    if unknown:
        raise InvalidRequest(unknown[0], f"unknown option {unknown[0]!r}")
    if "profile" not in raw:
        raise InvalidRequest("profile", "no profile chosen")
    slug = _single(raw, "profile")
    if not isinstance(slug, str):
        raise InvalidRequest("profile", f"profile: {slug!r} is not a profile name")
    profile = settings.profile(slug)
    if profile is None:
        raise InvalidRequest("profile", f"profile: {slug!r} is not a profile of this site")
    if profile not in allowed_profiles(settings, groups):
        raise InvalidRequest(
            "profile",
            f"profile {profile.display_name!r} is only for members of "
            f"{', '.join(profile.groups)}",
        )
    limits = effective_limits(settings, groups)
    values: dict[str, int] = {}
    for key, attr in ADJUSTABLE.items():
        bounds = getattr(profile, attr)
        value = _integer(key, _single(raw, key)) if key in raw else bounds.default
        if value < bounds.min:
            raise InvalidRequest(
                key, f"{LABELS[key]}: {value} is less than {bounds.min} for {profile.display_name}"
            )
        if value > bounds.max:
            raise InvalidRequest(
                key,
                f"{LABELS[key]}: {value} is more than the {bounds.max} allowed "
                f"for {profile.display_name}",
            )
        group_max = getattr(limits, LIMIT_FOR[key])
        if group_max is not None and value > group_max:
            raise InvalidRequest(
                key, f"{LABELS[key]}: {value} is more than your groups' limit of {group_max}"
            )
        values[key] = value
    charge = ChargeChoices.for_site(profile, access, settings.slurm).resolve(raw)
    return SessionRequest(profile=profile, charge=charge, **values)
