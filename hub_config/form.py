"""The spawn form: the profiles a user may choose, with the resources they may adjust and the
Slurm account, QoS and reservation their session is charged to."""

from __future__ import annotations

import functools
import json
from importlib import resources

from jinja2 import Environment, select_autoescape

from bioimage_gateway.session_request import ADJUSTABLE, LABELS, ChargeChoices, SlurmAccess
from bioimage_gateway.settings import GroupLimits, Profile

from .cluster_info import Snapshot

_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True))

# How the form shows "" (no option given to sbatch) in each list.
NO_CHOICE = {"account": "your default account", "qos": "the account's default QoS",
             "reservation": "none"}


def _bounds(profile: Profile, limits: GroupLimits) -> dict[str, dict[str, int]]:
    """Per field: min, default and max for this user (profile maxima capped by group limits)."""
    out = {}
    for key, attr in ADJUSTABLE.items():
        rng = getattr(profile, attr)
        cap = getattr(limits, f"max_{key}")
        top = rng.max if cap is None else min(rng.max, cap)
        out[key] = {"min": rng.min, "default": min(rng.default, top), "max": top}
    return out


def _charge(profile: Profile, access: SlurmAccess) -> dict:
    """Per profile: the accounts offered, and per account the QoS and reservations with
    what is preselected; computed by the same rules that check a submission.  Where Slurm
    did not say, only the profile's own names (and Slurm's defaults) are offered."""
    choices = ChargeChoices(profile, access)
    locked = {key: getattr(profile, key) or "" for key in profile.locked}

    def offer(key: str, names: list[str], preselected: str | None) -> list[str]:
        # "" is no option to sbatch: Slurm's default account or QoS, or no reservation.
        if key in locked:
            return [locked[key]]
        return names if preselected in names else ["", *names]

    account = choices.default_account()
    by_account = {}
    for value in offer("account", choices.accounts(), account):
        name = value or None
        qos = choices.default_qos(name)
        by_account[value] = {
            "qos": offer("qos", choices.qos(name), qos),
            "qos_default": qos or "",
            "reservation": offer("reservation", choices.reservations(name), None),
            "reservation_default": choices.default_reservation(name) or "",
        }
    return {"accounts": list(by_account), "account_default": account or "",
            "by_account": by_account, "locked": locked}


@functools.cache
def _template():
    # Compiled once per hub: the form is rendered on every spawn-page load.
    return _ENV.from_string(
        resources.files(__package__).joinpath("templates", "options_form.html").read_text()
    )


def render_options_form(
    profiles: list[Profile], limits: GroupLimits, cluster: Snapshot | None = None
) -> str:
    if not profiles:
        return (
            "<p class='alert alert-warning'>None of the session profiles of this site "
            "is open to your groups. Ask the gateway's administrators to add you to a "
            "group that may start sessions.</p>"
        )
    bounds = {p.slug: _bounds(p, limits) for p in profiles}
    cluster = cluster or Snapshot()
    charge = {p.slug: _charge(p, cluster.access) for p in profiles}
    # The reservations a session of this user may run in, with one of the accounts offered.
    offered = {name for c in charge.values() for per in c["by_account"].values()
               for name in per["reservation"]}
    open_reservations = [r for r in cluster.access.reservations or () if r.name in offered]
    labels = {r.name: f"{r.name} (until {r.end})" for r in open_reservations}
    # What the fields show before the page's script runs: the first profile's choices.
    first = charge[profiles[0].slug]
    per = first["by_account"][first["account_default"]]
    fields = [("account", "Slurm account", first["accounts"], first["account_default"]),
              ("qos", "QoS", per["qos"], per["qos_default"]),
              ("reservation", "Reservation", per["reservation"], per["reservation_default"])]
    return _template().render(
        cluster=cluster,
        profiles=profiles,
        bounds=bounds,
        bounds_json=json.dumps(bounds),
        charge=charge,
        no_choice=NO_CHOICE,
        reservation_labels=labels,
        open_reservations=open_reservations,
        charge_fields=fields,
        fields=[(key, LABELS[key]) for key in ADJUSTABLE],
        first=profiles[0].slug,
    )
