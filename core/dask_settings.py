"""The ``dask:`` section of ``gateway.yaml``: Dask clusters started from sessions.

A site sets how big a user's Dask cluster may be (per group, like
``group_limits`` for sessions) and where workers keep their scratch files.
The cluster factory (:mod:`bioimage_gateway.dask_clusters`) checks every
request against these limits before a single job is submitted.

Until ``GatewaySettings`` carries this section (``dask: DaskSettings``), the
session reads it from the raw YAML file named by ``BIOIMAGE_GATEWAY_CONFIG``
(:func:`load_dask_settings`), or uses the defaults below.

These limits keep users from asking for more than the site intends through
the gateway's own tools; hard enforcement stays Slurm's (QOS, associations).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .limits import most_generous

# No import of .settings at module level: settings.py imports this module for
# GatewaySettings.dask.  Same name rule as settings.GroupName.
GroupName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
ENV_VAR = "BIOIMAGE_GATEWAY_CONFIG"

# The spawner may hand the session its already-resolved limits (JSON of DaskLimits).
LIMITS_ENV = "BIOIMAGE_GATEWAY_DASK_LIMITS"
GROUPS_ENV = "BIOIMAGE_GATEWAY_GROUPS"


# A path below the user's home (no leading "/"; ".." parts are refused by a validator).
_RELATIVE_PATH = r"^[A-Za-z0-9_.\-][A-Za-z0-9_.\-/]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DaskLimits(_Model):
    """What one user's Dask cluster may use; ``None`` means no limit of ours."""

    max_workers: int | None = Field(default=None, ge=0, le=100_000)
    max_worker_cores: int | None = Field(default=None, ge=1, le=10_000)
    max_worker_memory_gb: int | None = Field(default=None, ge=1, le=100_000)
    max_walltime_hours: int | None = Field(default=None, ge=1, le=24 * 365)


class DaskSettings(_Model):
    enabled: bool = Field(default=True, description="Offer Dask clusters in sessions.")
    worker_cores: int = Field(default=1, ge=1, le=10_000, description="Default cores per worker.")
    worker_memory_gb: int = Field(
        default=2, ge=1, le=100_000, description="Default memory per worker (GiB)."
    )
    default_walltime_hours: int = Field(
        default=8, ge=1, le=24 * 365,
        description="Worker walltime outside a session; in a session workers get "
        "the session's time left (never more than the limit).",
    )
    local_directory: str = Field(
        default="$TMPDIR",
        pattern=r"^(\$TMPDIR|/[A-Za-z0-9_.\-/]*\{user\}[A-Za-z0-9_.\-/{}]*)$",
        description="Workers' spill directory on node-local disk: $TMPDIR (a folder "
        "dask-<user> in $TMPDIR, else in /tmp) or an absolute path with {user} in it, "
        "the user's name.  Each worker job makes it a folder of the user's alone (0700) "
        "and refuses one that someone else made.",
    )
    log_directory: str = Field(
        default=".bioimage-gateway/logs/dask",
        pattern=_RELATIVE_PATH,
        description="Worker job logs, relative to the user's home directory (0700).",
    )
    runtime_directory: str = Field(
        default=".bioimage-gateway/dask",
        pattern=_RELATIVE_PATH,
        description="Relative to the user's home directory (the shared file system): one "
        "private folder (0700) per cluster with its TLS certificate and key, the "
        "dashboard's Unix socket and the job scripts being submitted.",
    )
    interface: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.\-]{1,32}$",
        description="Network interface workers and scheduler talk on (e.g. ib0).",
    )
    dashboard_host: str = Field(
        default="127.0.0.1", description="Not used any more: the dashboard listens on a "
        "Unix socket in the cluster's private folder (accepted in older files)."
    )
    death_timeout: int = Field(
        default=60, ge=5, le=3600,
        description="Seconds a worker waits for its scheduler before it exits.",
    )
    guard_interval: int = Field(
        default=30, ge=1, le=3600,
        description="Seconds between a worker job's checks that its session still runs.",
    )
    default_limits: DaskLimits = DaskLimits(
        max_workers=4, max_worker_cores=4, max_worker_memory_gb=16, max_walltime_hours=8
    )
    group_limits: dict[GroupName, DaskLimits] = Field(default_factory=dict)

    @field_validator("local_directory", "log_directory", "runtime_directory")
    @classmethod
    def _stays_where_it_says(cls, value: str) -> str:
        if ".." in value.split("/"):
            raise ValueError("a '..' part would lead out of the folder it names")
        return value

    def limits_for(self, groups: Iterable[str]) -> DaskLimits:
        """The most generous limits among the user's groups, else the site default."""
        return most_generous(self.group_limits, groups, self.default_limits)


def parse_dask_settings(data: Any, source: str = "gateway.yaml") -> DaskSettings:
    from .settings import SettingsError

    try:
        return DaskSettings.model_validate(data or {})
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            where = ".".join(str(p) for p in ("dask", *error["loc"]))
            problems.append(f"  {where}: {error['msg']}")
        raise SettingsError(f"{source} is not valid:\n" + "\n".join(problems)) from None


def load_dask_settings(settings: Any = None) -> DaskSettings:
    """The site's Dask settings.

    From ``settings.dask`` when a GatewaySettings with that section is given,
    else the ``dask:`` key of the file named by ``BIOIMAGE_GATEWAY_CONFIG`` when
    the session can read it, else the defaults.
    """
    if isinstance(settings, DaskSettings):
        return settings
    if settings is not None and getattr(settings, "dask", None) is not None:
        return settings.dask
    path = os.environ.get(ENV_VAR)
    if not path:
        return DaskSettings()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return DaskSettings()  # not readable from the session: the defaults apply
    return parse_dask_settings(data.get("dask") if isinstance(data, dict) else None, path)


def session_groups() -> list[str]:
    """The user's gateway groups, as the spawner passed them to the session."""
    raw = os.environ.get(GROUPS_ENV, "")
    return [g for g in raw.split(",") if g]


def effective_dask_limits(
    settings: Any = None, groups: Iterable[str] | None = None
) -> DaskLimits:
    """Limits for this user: resolved by the spawner if it passed them, else from settings."""
    if settings is None and groups is None and os.environ.get(LIMITS_ENV):
        try:
            return DaskLimits.model_validate(json.loads(os.environ[LIMITS_ENV]))
        except (ValueError, ValidationError):
            pass  # a broken value falls back to the site file
    dask_settings = load_dask_settings(settings)
    return dask_settings.limits_for(session_groups() if groups is None else groups)
