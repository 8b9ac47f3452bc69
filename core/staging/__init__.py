"""Staging data onto scratch: only what is needed, fast, verified, resumable; and back.

::

    from bioimage_gateway import staging
    path = staging.stage("irods://zone/home/alice/embryo.ome.zarr", levels=[2], channels=["GFP"],
                         timepoints=range(0, 10))          # a valid OME-Zarr on scratch
    staging.status(path)                                   # bytes, objects, rate, ETA
    staging.stage(url, levels=[0], background=True)        # survives a kernel restart
    staging.evict(url)
    staging.publish(results_dir, "irods://zone/home/alice/results/seg.ome.zarr")

* ``stage`` (``api``): OME-Zarr-aware selection (``plan``), parallel verified transfers
  (``transfer``), a journal to resume, a per-user cache (mode 0700) keyed by source and
  selection, LRU eviction under a quota, a free-space check, background runs; only folders and
  files the user made are trusted (``private``: ``UntrustedPath`` otherwise).
* ``publish`` (``publish``): parallel upload to iRODS, checksums compared with iRODS's,
  no overwriting unless asked, provenance AVUs.
* Command line: ``bioimage-gateway stage|evict|publish`` and
  ``python -m bioimage_gateway.staging run <job.json>`` (the background runner).
"""

from .api import cache_key, cache_root, evict, stage, status, wait
from .errors import (AlreadyExists, InsufficientSpace, SelectionError, StagingError, UntrustedPath,
                     VerificationFailed)
from .plan import normalise_selection, plan
from .publish import publish

__all__ = ["stage", "status", "wait", "evict", "publish", "plan", "normalise_selection", "cache_key",
           "cache_root", "StagingError", "SelectionError", "InsufficientSpace", "VerificationFailed",
           "AlreadyExists", "UntrustedPath"]
