"""Site settings: one YAML file (``gateway.yaml``), validated by one model.

A site describes its hub, its Slurm cluster, the session profiles and the
per-group limits here; nothing else needs Python.  A bad file is refused at
start with the key, the value and why (``profiles[2].cpus.default: 0 is less
than 1``), never half-applied.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .dask_settings import DaskSettings
from .staging_settings import StagingSettings

ENV_VAR = "BIOIMAGE_GATEWAY_CONFIG"
DEFAULT_PATH = Path("/etc/bioimage-gateway/gateway.yaml")

# Names that reach sbatch options.  They come from the site, but are still held
# to the characters Slurm allows so a typo cannot inject a second option.
SlurmName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9\-]{0,31}$")]
GroupName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]


class SettingsError(ValueError):
    """The site settings file cannot be used; the message names each problem."""


class _Model(BaseModel):
    # Unknown keys are typos; refuse them rather than silently ignore them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Model):
    """A resource a user may adjust: the form starts at ``default``, never exceeds ``max``.

    A plain number is a fixed amount: ``cpus: 4`` is ``{default: 4, max: 4}``.
    """

    default: int = Field(ge=0)
    max: int = Field(ge=0, le=100_000)
    min: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _fixed_amount(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            floor = cls.model_fields["min"].default
            if data < floor:
                raise ValueError(f"{data} is less than {floor}")
            return {"default": data, "max": data, "min": data}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if not self.min <= self.default <= self.max:
            raise ValueError(
                f"needs min <= default <= max, got min={self.min}, "
                f"default={self.default}, max={self.max}"
            )
        return self


class PositiveRange(Range):
    default: int = Field(ge=1)
    max: int = Field(ge=1, le=100_000)
    min: int = Field(default=1, ge=1)


class HubSettings(_Model):
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="URL users open in their browser.",
    )
    ip: str = Field(default="127.0.0.1", description="Address the proxy listens on.")
    port: int = Field(default=8000, ge=1, le=65535)
    api_ip: str = Field(default="127.0.0.1", description="Address the hub API listens on.")
    api_port: int = Field(default=8081, ge=1, le=65535)
    api_connect_url: str = Field(
        default="",
        description="URL compute nodes use to reach the hub API; "
        "default http://<api_ip>:<api_port>.",
    )
    proxy_api_port: int = Field(default=8001, ge=1, le=65535)
    data_dir: Path = Field(
        default=Path("/var/lib/bioimage-gateway"),
        description="Hub state: database, cookie secret, proxy token.",
    )
    db_url: str = Field(
        default="", description="SQLAlchemy URL; default SQLite in data_dir."
    )
    admin_users: list[str] = Field(default_factory=list)
    announcement: str = Field(
        default="",
        description="Shown on the home and spawn pages (HTML allowed: written by the site).",
    )
    sqlite_wal: bool = Field(
        default=True,
        description="The SQLite database in write-ahead-log mode, synced at checkpoints "
        "(a power cut can lose the last commits, never the database).",
    )
    gc_freeze: bool = Field(
        default=True,
        description="Objects alive once the hub has loaded are kept out of the garbage "
        "collector's full passes, and young passes run less often.",
    )


class DummyAuth(_Model):
    """Local accounts for the devstack and the demo only."""

    provider: Literal["dummy"]
    users_file: Path = Field(
        description='JSON list of {"username", "password", "groups"} objects.'
    )


# Accounts no IdP user may become, whatever their uid: the superuser, the
# daemons the gateway and its cluster run as, and the usual system accounts.
# The hub's own account is refused as well, whichever it is.
SYSTEM_ACCOUNTS = (
    "root", "daemon", "bin", "sys", "sync", "adm", "nobody", "nfsnobody",
    "slurm", "munge", "jupyterhub", "bioimage-gateway", "postgres", "mysql", "irods", "omero",
    "sshd", "messagebus", "polkitd", "systemd-network", "systemd-resolve", "systemd-timesync",
    "www-data", "_apt",
)


class PosixMapping(_Model):
    """How an IdP username becomes the POSIX account a session runs as."""

    claim: str | None = Field(
        default=None, description="Claim holding the POSIX name (e.g. a custom 'uid')."
    )
    map_file: Path | None = Field(
        default=None,
        description="YAML/JSON file mapping IdP usernames (exactly as the IdP sends them) "
        "to POSIX names; a user it does not list is refused.",
    )
    min_uid: int = Field(
        default=1000, ge=0,
        description="Accounts with a lower uid are system accounts: no one signs in as them.",
    )
    denied_accounts: list[str] = Field(
        default_factory=lambda: list(SYSTEM_ACCOUNTS),
        description="Accounts no one signs in as, whatever their uid (the hub's own account "
        "is always among them).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "PosixMapping":
        if self.claim and self.map_file:
            raise ValueError("give either claim or map_file, not both")
        return self


class AuthentikAuth(_Model):
    """The site's Authentik, as an OIDC provider (see the README for registering the app)."""

    provider: Literal["authentik"]
    # Before url: its check reads this.
    allow_insecure_http: bool = Field(
        default=False,
        description="Accept an http:// url (sign-in codes and tokens unencrypted on the "
        "network): for a test stack on one machine only.",
    )
    url: str = Field(
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="Authentik's base URL (https://)."
    )
    application_slug: Slug
    client_id: str = Field(min_length=1)
    client_secret_file: Path = Field(description="File holding the client secret (mode 0600).")
    username_claim: str = "preferred_username"
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email", "offline_access"]
    )
    allowed_groups: list[GroupName] = Field(
        min_length=1, description="Groups whose members may sign in."
    )
    admin_groups: list[GroupName] = Field(
        default_factory=list,
        description="Groups whose members get the hub's admin pages (users, servers, groups); "
        "not access to other users' sessions unless admin_server_access is on.",
    )
    admin_server_access: bool = Field(
        default=False,
        description="Let admins open other users' running sessions and read their sign-in "
        "tokens (auth state); each time an admin is let into another user's session, the "
        "hub's log says who, whose and where.",
    )
    require_verified_email: bool = Field(
        default=False,
        description="Refuse users whose email_verified claim is not true. Authentik "
        "(2025.10 and later) sends email_verified: false for everyone with its default "
        "'email' scope mapping, so turning this on needs a custom scope mapping for the "
        "scope 'email' on the provider that returns {\"email\": request.user.email, "
        "\"email_verified\": True} (or the value of a user attribute the site keeps "
        "up to date), selected in place of the default one.",
    )
    posix: PosixMapping = PosixMapping()
    pass_access_token: bool = Field(
        default=False,
        description="Hand the user's access token to their session "
        "(as BIOIMAGE_GATEWAY_ACCESS_TOKEN) for services that accept it.",
    )
    crypt_key_file: Path = Field(
        description="File holding JUPYTERHUB_CRYPT_KEY (64 hex characters), which "
        "encrypts the tokens the hub keeps."
    )
    after_logout_url: str = Field(
        default="", description="Where Authentik sends users after logout; default the hub."
    )

    @field_validator("url")
    @classmethod
    def _encrypted(cls, value: str, info: ValidationInfo) -> str:
        if value.lower().startswith("http://") and not info.data.get("allow_insecure_http"):
            raise ValueError(
                f"{value!r} is plain http, which would carry sign-in codes and tokens "
                "unencrypted; use https://, or set auth.allow_insecure_http: true for a "
                "test stack on one machine"
            )
        return value


AuthSettings = DummyAuth | AuthentikAuth


class SlurmSettings(_Model):
    conf: Path = Field(
        default=Path("/etc/slurm/slurm.conf"),
        description="slurm.conf the Slurm commands read (SLURM_CONF).",
    )
    bin_dir: Path = Field(default=Path("/usr/bin"))
    poll_interval: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Seconds between the hub's checks of running sessions "
        "(one squeue call for all of them).",
    )
    start_poll_interval: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Seconds between checks while any session is starting; a job "
        "that dies at start is reported within two of these.",
    )
    default_walltime_hours: int = Field(default=8, ge=1, le=24 * 30)
    live_data_ttl: float = Field(
        default=30, gt=0, le=3600,
        description="Seconds the spawn form's live cluster data (free CPUs, accounts, "
        "reservations) is reused before a background refresh.",
    )
    query_timeout: float = Field(
        default=5, gt=0, le=120,
        description="Seconds a live-data query may take before the form falls back.",
    )
    partitions: list[SlurmName] = Field(default_factory=list)
    accounts: list[SlurmName] = Field(default_factory=list)
    qos: list[SlurmName] = Field(default_factory=list)
    reservations: list[SlurmName] = Field(default_factory=list)
    sudo: str = Field(
        default="/usr/bin/sudo",
        description="sudo used to run Slurm commands as the user.",
    )


# What a user may choose on the form (among their own associations and reservations).
ChargeField = Literal["account", "qos", "reservation"]


class Profile(_Model):
    slug: Slug
    display_name: str = Field(min_length=1, max_length=80)
    description: str = ""
    partition: SlurmName
    account: SlurmName | None = Field(
        default=None,
        description="Account preselected on the form (if the user has it); none: the "
        "user's default account.",
    )
    qos: SlurmName | None = Field(
        default=None,
        description="QoS preselected on the form (if the account allows it); none: the "
        "association's default QoS.",
    )
    reservation: SlurmName | None = Field(
        default=None,
        description="Reservation preselected on the form while it is active and open "
        "to the user.",
    )
    locked: list[ChargeField] = Field(
        default_factory=list,
        description="Of account, qos and reservation: those users may not choose on this "
        "profile; its own value (or none) is always used, whatever their associations "
        "(Slurm still enforces them).",
    )
    cpus: PositiveRange
    memory_gb: PositiveRange
    gpus: Range = Range(default=0, max=0)
    walltime_hours: PositiveRange
    groups: list[GroupName] = Field(
        default_factory=list,
        description="Groups allowed to use this profile; empty means every user.",
    )


class GroupLimits(_Model):
    max_sessions: int = Field(default=1, ge=0, le=1000)
    max_cpus: int | None = Field(default=None, ge=1)
    max_memory_gb: int | None = Field(default=None, ge=1)
    max_gpus: int | None = Field(default=None, ge=0)
    max_walltime_hours: int | None = Field(default=None, ge=1)


class SessionSettings(_Model):
    environment: Path = Field(
        description="Prefix of the Python environment sessions run in "
        "(a virtual environment or conda prefix readable by every user).",
    )
    default_url: str = "/lab"
    start_timeout: int = Field(default=300, ge=10, le=86_400)
    http_timeout: int = Field(default=60, ge=5, le=3600)
    listen_ip: str = Field(
        default="",
        description="Where a session's server listens on its compute node, which other users "
        "share: never on loopback or on every address (0.0.0.0). Empty: the node's own address "
        "on its route to the hub, where the hub reaches it. A network in CIDR form "
        "(10.1.0.0/16): the node's address in that network, for nodes on several networks.",
    )
    log_dir: str = Field(
        default=".bioimage-gateway/logs",
        pattern=r"^[A-Za-z0-9_.\-/]+$",
        description="Job logs, relative to the user's home directory.",
    )
    walltime_warning_minutes: int = Field(
        default=15, ge=0, le=24 * 60,
        description="JupyterLab warns this long before the session's walltime ends (0: never).",
    )
    prologue: str = Field(
        default="",
        description="Site shell lines run in the job before the session starts "
        "(module loads); written by the site, never by users.",
    )

    @field_validator("log_dir")
    @classmethod
    def _relative(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be a relative path inside the home directory")
        return value

    @field_validator("listen_ip")
    @classmethod
    def _a_network(cls, value: str) -> str:
        if not value:
            return value
        hint = ("leave it empty (the node's address towards the hub) or give the nodes' "
                "network in CIDR form, such as 10.1.0.0/16")
        try:
            network = ipaddress.ip_network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a network; {hint}") from None
        if network.network_address.is_unspecified:
            raise ValueError(f"{value} is every address of a node that other users share; {hint}")
        if network.network_address.is_loopback:
            raise ValueError(f"{value} is loopback, where the hub cannot reach a node; {hint}")
        if "/" not in value:
            raise ValueError(f"{value} is one address, and every node has its own; {hint}")
        return value


class IdleCullerSettings(_Model):
    """jupyterhub-idle-culler, run by the hub; busy kernels and transfers count as activity."""

    enabled: bool = True
    timeout_seconds: int = Field(default=4 * 3600, ge=10, description="Idle time before a "
                                 "session is stopped and its node given back.")
    every_seconds: int = Field(default=300, ge=5, description="How often the culler looks.")
    activity_interval_seconds: int = Field(
        default=300, ge=5,
        description="How often sessions report activity to the hub (and the hub records it).",
    )


class CatalogSettings(_Model):
    """The data services sessions browse (iRODS needs nothing here: each user's own
    ``~/.irods/irods_environment.json`` says where their zone is)."""

    omero_url: AnyHttpUrl | None = Field(
        default=None, description="OMERO.web of the site (http(s)://host[/prefix]); users sign in "
        "with their OMERO account in the data browser.",
    )


class GatewaySettings(_Model):
    hub: HubSettings = HubSettings()
    auth: AuthSettings | None = Field(
        default=None, discriminator="provider", description="How users log in."
    )
    slurm: SlurmSettings = SlurmSettings()
    profiles: list[Profile] = Field(min_length=1)
    group_limits: dict[GroupName, GroupLimits] = Field(default_factory=dict)
    default_limits: GroupLimits = GroupLimits()
    scratch_root: Path = Path("/scratch")
    session: SessionSettings
    idle_culler: IdleCullerSettings = IdleCullerSettings()
    dask: DaskSettings = DaskSettings()
    staging: StagingSettings = StagingSettings()
    catalogs: CatalogSettings = CatalogSettings()

    @model_validator(mode="after")
    def _consistent(self) -> "GatewaySettings":
        slugs = [p.slug for p in self.profiles]
        for index, slug in enumerate(slugs):
            if slug in slugs[:index]:
                raise ValueError(f"profiles[{index}].slug: {slug!r} is used twice")
        # A profile's key and the list of `slurm:` it is checked against.
        allowed = {
            "partition": "partitions",
            "account": "accounts",
            "qos": "qos",
            "reservation": "reservations",
        }
        for index, profile in enumerate(self.profiles):
            for key, listed in allowed.items():
                value, known = getattr(profile, key), getattr(self.slurm, listed)
                # An empty list in `slurm:` means the site did not enumerate them.
                if value is not None and known and value not in known:
                    raise ValueError(
                        f"profiles[{index}].{key}: {value!r} is not one of "
                        f"slurm.{listed} {known}"
                    )
        return self

    def profile(self, slug: str) -> Profile | None:
        return next((p for p in self.profiles if p.slug == slug), None)

    @property
    def hub_connect_url(self) -> str:
        return self.hub.api_connect_url or f"http://{self.hub.api_ip}:{self.hub.api_port}"


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("dummy", "authentik"):
            continue  # the discriminator's branch name, not a key in the file
        else:
            out += f".{part}" if out else str(part)
    return out


# pydantic's wording, rewritten to read as "<key>: <value> <why>".
_REWORD = {
    "greater_than_equal": lambda ctx: f"is less than {ctx['ge']}",
    "greater_than": lambda ctx: f"is not more than {ctx['gt']}",
    "less_than_equal": lambda ctx: f"is more than {ctx['le']}",
    "string_pattern_mismatch": lambda ctx: f"does not match {ctx['pattern']}",
}


def _describe(error: dict[str, Any]) -> str:
    where = _location(error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "value_error":
        # Our own validators word the whole sentence, value included.
        return f"{where}: {error['msg'].removeprefix('Value error, ')}"
    reword = _REWORD.get(kind)
    message = reword(error.get("ctx", {})) if reword else error["msg"]
    return f"{where}: {error.get('input')!r} {message}"


def parse_settings(data: Any, source: str = "gateway.yaml") -> GatewaySettings:
    """Validate already-loaded YAML data; raise SettingsError naming every problem."""
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: the top level must be a mapping of keys")
    try:
        return GatewaySettings.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors(include_url=False)]
        raise SettingsError(
            f"{source} is not valid:\n" + "\n".join(f"  {p}" for p in problems)
        ) from None


def load_settings(path: str | os.PathLike[str] | None = None) -> GatewaySettings:
    """Read and validate the site's settings file.

    The path is the argument, else ``$BIOIMAGE_GATEWAY_CONFIG``, else
    ``/etc/bioimage-gateway/gateway.yaml``.
    """
    path = Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path} is not valid YAML: {exc}") from None
    return parse_settings(data, source=str(path))


def json_schema() -> dict[str, Any]:
    schema = GatewaySettings.model_json_schema()
    # A range may also be written as a plain number (a fixed amount).
    for name, floor in (("Range", 0), ("PositiveRange", 1)):
        mapping = schema["$defs"][name]
        schema["$defs"][name] = {
            "title": mapping.pop("title"),
            "description": mapping.pop("description", ""),
            "anyOf": [mapping, {"type": "integer", "minimum": floor, "maximum": 100_000}],
        }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "BioImage Gateway site settings (gateway.yaml)"
    return schema


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
