"""hub.gc_freeze: the hub's long-lived objects kept out of full collections, or not."""

from __future__ import annotations

import gc

import pytest
from configured_hub import configured_hub


@pytest.fixture
def collector():
    """The collector as this test process had it, put back afterwards."""
    threshold = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_the_hub_freezes_what_it_has_loaded_and_collects_young_objects_less_often(
        tmp_path, collector):
    young = gc.get_threshold()[0]
    configured_hub(tmp_path, gc_freeze=True)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] > young


def test_a_site_can_keep_pythons_collector_as_it_is(tmp_path, collector):
    threshold = gc.get_threshold()
    configured_hub(tmp_path, gc_freeze=False)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold
