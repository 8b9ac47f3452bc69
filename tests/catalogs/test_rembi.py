"""REMBI mapping of catalog metadata (pure logic)."""

from __future__ import annotations

import pytest

from bioimage_gateway.catalogs.rembi import SECTIONS, section_key, to_rembi


def test_rembi_prefix_places_keys_in_sections():
    meta = {"rembi:biosample.organism": [("Mus musculus", "")],
            "rembi:Image acquisition.imaging_method": [("light-sheet", "")],
            "rembi:image_data.voxel_size": [("0.5", "um"), ("2.0", "um")],
            "rembi:study.title": [("Atlas", "")], "rembi:specimen.preparation_method": [("cleared", "")],
            "rembi:analysed_data.segmentation": [("nuclei.ome.zarr", "")]}
    assert to_rembi(meta) == {
        "biosample": {"organism": "Mus musculus"},
        "image_acquisition": {"imaging_method": "light-sheet"},
        "image_data": {"voxel_size": ["0.5 um", "2.0 um"]},  # units kept, repeated values listed
        "study": {"title": "Atlas"},
        "specimen": {"preparation_method": "cleared"},
        "analysed_data": {"segmentation": "nuclei.ome.zarr"}}


def test_site_map_wins_and_unknown_keys_are_kept_as_they_are():
    meta = {"organism": [("Mus musculus", "")], "modality": [("confocal", "")], "Operator": [("ada", "")],
            "rembi:nonsense.field": [("x", "")], "rembi:biosample": [("no field", "")]}
    site = {"organism": "Biosample.organism", "modality": "image-acquisition.imaging_method"}
    assert to_rembi(meta, site) == {
        "biosample": {"organism": "Mus musculus"},
        "image_acquisition": {"imaging_method": "confocal"},
        "other": {"Operator": "ada", "rembi:nonsense.field": "x", "rembi:biosample": "no field"}}
    # a site-map entry overrides a rembi: prefix, and two keys may fill one field
    both = to_rembi({"rembi:biosample.organism": [("Mus musculus", "")], "species": [("M. musculus", "")]},
                    {"species": "Biosample.organism"})
    assert both == {"biosample": {"organism": ["Mus musculus", "M. musculus"]}}


def test_empty_metadata_and_section_names():
    assert to_rembi({}) == {}
    assert section_key("Analyzed Data") == "analysed_data" and section_key("Sample") is None
    assert set(SECTIONS) == {"study", "biosample", "specimen", "image_acquisition", "image_data", "analysed_data"}


def test_bad_site_map_names_every_bad_entry():
    with pytest.raises(ValueError, match=r"'a' -> 'Organism'.*'b' -> 'Sample.organism'"):
        to_rembi({"a": [("1", "")]}, {"a": "Organism", "b": "Sample.organism", "c": "Study.title"})
