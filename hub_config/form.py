"""The spawn form: the profiles a user may choose, with the resources they may adjust."""

from __future__ import annotations

import functools
import json
from importlib import resources

from jinja2 import Environment, select_autoescape

from bioimage_gateway.session_request import ADJUSTABLE, LABELS
from bioimage_gateway.settings import GroupLimits, Profile

from .cluster_info import Snapshot

_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True))


def _bounds(profile: Profile, limits: GroupLimits) -> dict[str, dict[str, int]]:
    """Per field: min, default and max for this user (profile maxima capped by group limits)."""
    out = {}
    for key, attr in ADJUSTABLE.items():
        rng = getattr(profile, attr)
        cap = getattr(limits, f"max_{key}")
        top = rng.max if cap is None else min(rng.max, cap)
        out[key] = {"min": rng.min, "default": min(rng.default, top), "max": top}
    return out


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
    return _template().render(
        cluster=cluster,
        profiles=profiles,
        bounds=bounds,
        bounds_json=json.dumps(bounds),
        fields=[(key, LABELS[key]) for key in ADJUSTABLE],
        first=profiles[0].slug,
    )
