"""The hub process's garbage collector, tuned for a server that holds much and answers fast.

The hub holds some hundred thousand long-lived objects (modules, templates, the ORM's users
and spawners). CPython's full collections walk all of them: during a burst of 200 sign-ins
each took up to 0.3 s, with the hub's one event loop standing still. Objects alive once the
hub has loaded are moved out of the collector's sight (``gc.freeze``, after a collection so
that no garbage is kept with them), and young collections run less often; what is created
later is still collected as before.  Switched off (``hub.gc_freeze: false``) in paired rounds
against itself, the p95 of the hub's responses to 200 sign-ins at once was 1.17-1.22x
(benchmarks/scale.py --only logins --hubs ours,ours-no-gc-freeze; one run of three: 1.00x).
"""

from __future__ import annotations

import asyncio
import gc

# Allocations between young collections (CPython's default is 700): fewer passes in a burst,
# a few MB more of not-yet-collected cycles at most.
YOUNG_THRESHOLD = 10_000
# When the hub has loaded its users and spawners (startup of a large hub included).
AFTER_START_SECONDS = 60.0


def freeze_long_lived() -> None:
    gc.collect()
    gc.freeze()


def tune() -> None:
    """Freeze what is loaded now (the hub's code), again once the hub has started, and
    collect young objects less often."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    freeze_long_lived()
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # configuration loaded outside the hub (tests, `jupyterhub --help-all`)
        return
    loop.call_later(AFTER_START_SECONDS, freeze_long_lived)
