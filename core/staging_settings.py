"""The ``staging:`` section of ``gateway.yaml``: where each user's staging cache lives, how big
it may grow, and how transfers run (see :mod:`bioimage_gateway.staging`).

The hub hands a session this section already resolved for its user (``{user}`` and
``{scratch_root}`` filled in) as JSON in ``$BIOIMAGE_GATEWAY_STAGING``, the way it hands over the
Dask limits. Outside a session, ``load_staging_settings`` reads the ``staging:`` key of the file
named by ``$BIOIMAGE_GATEWAY_CONFIG`` when it can, else the defaults apply.

Kept apart from ``settings.py`` (which imports this module for ``GatewaySettings.staging``) so
that a session reads it without the hub's model.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema,
                      field_validator)

ENV_VAR = "BIOIMAGE_GATEWAY_CONFIG"
SESSION_ENV = "BIOIMAGE_GATEWAY_STAGING"  # the section as the spawner resolved it for the session

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGTP])(?:I?B)?|B)?\s*$", re.IGNORECASE)
SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*([KMGTPkmgtp]([iI]?[bB])?|[bB])?\s*$"


def parse_size(value: Any) -> Any:
    """``"500G"``, ``"1.5TiB"``, ``"20000"`` or a number -> bytes (units are powers of 1024).
    Anything else is handed on unchanged for the model to refuse."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a size (a number of bytes, or with a unit: 500G, 2T, 800MiB)")
        return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])
    return value


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    Field(ge=1),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1},
                              {"type": "string", "pattern": SIZE_PATTERN}]}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StagingSettings(_Model):
    cache_dir: str | None = Field(
        default=None, max_length=4096,
        description="Each user's staging cache (created with mode 0700): an absolute path in which "
        "{user} is the user's name and {scratch_root} the site's scratch_root, e.g. "
        "'{scratch_root}/{user}/.staging'. Unset: <the user's scratch>/bioimage-gateway/staging, the "
        "user's scratch being ~/scratch in a session.",
    )
    quota: Size | None = Field(
        default=None,
        description="Most a user's cache may hold (bytes, or 500G, 2T...); least recently used staged "
        "copies are evicted to make room. Unset: no quota of ours (the file system's free space "
        "is still checked before each transfer).",
    )
    parallel_transfers: int = Field(
        default=16, ge=1, le=256, description="Objects in flight at once (iRODS connections, HTTP "
        "requests); local copies use at most the node's CPUs.")
    retries: int = Field(default=4, ge=1, le=20,
                         description="Attempts per object on a transient error or a checksum mismatch.")
    retry_backoff_seconds: float = Field(
        default=0.2, ge=0, le=60, description="First wait before a retry; doubled at each attempt.")
    range_threshold_mb: int = Field(
        default=64, ge=1, le=1_000_000,
        description="Objects larger than this (MiB) are read in parallel ranges.")
    range_size_mb: int = Field(default=16, ge=1, le=100_000, description="Size of one range (MiB).")
    range_parallel: int = Field(default=4, ge=1, le=64, description="Ranges of one object read at once.")
    journal_fsync: Literal["batch", "each"] = Field(
        default="batch",
        description="When the resume journal is forced to disk: 'batch' (every 0.2 s, group commit) "
        "or 'each' (after every object). Either way a killed transfer resumes; this is about "
        "a node crashing.",
    )

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not (value.startswith("/") or value.startswith("{scratch_root}")):
            raise ValueError(f"{value!r} must be an absolute path (or start with {{scratch_root}})")
        unknown = set(re.findall(r"\{([^{}]*)\}", value)) - {"user", "scratch_root"}
        if unknown or value.count("{") != value.count("}"):
            raise ValueError(f"{value!r}: the only placeholders are {{user}} and {{scratch_root}}")
        if ".." in value.split("/"):
            raise ValueError(f"{value!r} must not contain '..'")
        return value

    def for_user(self, user: str, scratch_root: str | os.PathLike) -> "StagingSettings":
        """This section with ``{user}`` and ``{scratch_root}`` filled in (what a session gets)."""
        if self.cache_dir is None:
            return self
        path = self.cache_dir.replace("{scratch_root}", str(scratch_root).rstrip("/")).replace("{user}", user)
        return self.model_copy(update={"cache_dir": path})

    def transfer_options(self) -> dict[str, Any]:
        """The keyword arguments of ``staging.stage`` these settings stand for."""
        return dict(threads=self.parallel_transfers, retries=self.retries, backoff=self.retry_backoff_seconds,
                    range_threshold=self.range_threshold_mb << 20, range_size=self.range_size_mb << 20,
                    range_threads=self.range_parallel, fsync=self.journal_fsync)


def parse_staging_settings(data: Any, source: str = "gateway.yaml") -> StagingSettings:
    from .settings import SettingsError, _describe

    try:
        return StagingSettings.model_validate(data or {})
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            problems.append("  " + _describe({**error, "loc": ("staging", *error["loc"])}))
        raise SettingsError(f"{source} is not valid:\n" + "\n".join(problems)) from None


def _user() -> str:
    user = os.environ.get("USER")
    if user:
        return user
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def load_staging_settings() -> StagingSettings:
    """This session's staging settings: ``$BIOIMAGE_GATEWAY_STAGING`` (from the spawner), else the
    ``staging:`` section of the file named by ``$BIOIMAGE_GATEWAY_CONFIG`` (resolved for this user)
    when it is readable, else the defaults. A value that is there but not valid is an error."""
    raw = os.environ.get(SESSION_ENV)
    if raw:
        try:
            data = json.loads(raw)
        except ValueError:
            from .settings import SettingsError
            raise SettingsError(f"${SESSION_ENV} is not valid JSON: {raw[:200]!r}") from None
        return parse_staging_settings(data, f"${SESSION_ENV}")
    path = os.environ.get(ENV_VAR)
    if not path:
        return StagingSettings()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return StagingSettings()  # not readable from here: the defaults apply
    if not isinstance(data, dict):
        return StagingSettings()
    settings = parse_staging_settings(data.get("staging"), path)
    return settings.for_user(_user(), data.get("scratch_root") or "/scratch")
