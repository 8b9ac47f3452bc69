"""What a user asked for, checked against the site's profiles and limits.

Everything a user submits (the spawn form, or JSON to the hub's REST API)
passes through :func:`resolve_request` before anything reaches Slurm.  The
result holds only integers and names taken from the site's settings, so the
batch script is built from trusted values alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .limits import most_generous
from .settings import GatewaySettings, GroupLimits, Profile

_DIGITS = re.compile(r"^[0-9]{1,6}$")

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


class InvalidRequest(ValueError):
    """A submitted option was refused; the message is shown to the user as is."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SessionRequest:
    profile: Profile
    cpus: int
    memory_gb: int
    gpus: int
    walltime_hours: int

    def as_options(self) -> dict[str, Any]:
        """JSON-safe form, as stored in the hub's database (``user_options``)."""
        return {
            "profile": self.profile.slug,
            "cpus": self.cpus,
            "memory_gb": self.memory_gb,
            "gpus": self.gpus,
            "walltime_hours": self.walltime_hours,
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
    settings: GatewaySettings, groups: Iterable[str], raw: Mapping[str, Any]
) -> SessionRequest:
    """Turn submitted options into a :class:`SessionRequest`, or raise InvalidRequest."""
    if not isinstance(raw, Mapping):
        raise InvalidRequest("", "options must be a mapping of names to values")
    groups = list(groups)
    unknown = sorted(str(k) for k in raw if k not in ("profile", *ADJUSTABLE))
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
    return SessionRequest(profile=profile, **values)
