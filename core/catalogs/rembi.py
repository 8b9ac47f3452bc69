"""Catalog metadata (iRODS AVUs, OMERO key-value pairs) as REMBI.

REMBI (Recommended Metadata for Biological Images, Sarkans et al., Nature Methods 2021) groups
an image's metadata in sections; the ones used here, with their keys in the result:

=====================  ======================  ===================================================
section (key)          REMBI section           e.g. fields
=====================  ======================  ===================================================
``study``              Study                   title, description, authors, license, funding
``biosample``          Biosample               organism, biological_entity, variables, intrinsic_variables
``specimen``           Specimen                preparation_method, signal_channel_information
``image_acquisition``  Image acquisition       imaging_instrument, imaging_method (modality), settings
``image_data``         Image data              image_type, dimensions, voxel_size, channels
``analysed_data``      Analysed data           analysis_method, segmentation, derived_from
``other``              (not REMBI)             every key that maps to no section, kept as it is
=====================  ======================  ===================================================

How a metadata key finds its place, first rule that applies:

1. the site map (``site_map``: ``{attribute name: "Section.field"}``, e.g.
   ``{"organism": "Biosample.organism", "modality": "Image acquisition.imaging_method"}``);
2. a ``rembi:`` prefix: ``rembi:<section>.<field>``, e.g. ``rembi:biosample.organism`` or
   ``rembi:image_acquisition.imaging_method``;
3. otherwise the key goes, unchanged, to ``other``.

Sections may be written as in REMBI ("Image acquisition") or as keys ("image_acquisition"),
in any case; fields are kept as written (stripped). A field with one value holds the value (a
string, with its units after a space when there are units: ``"0.5 um"``); a field with several
values (repeated AVUs, or several keys mapping to one field) holds the list, in order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

SECTIONS = {
    "study": "Study",
    "biosample": "Biosample",
    "specimen": "Specimen",
    "image_acquisition": "Image acquisition",
    "image_data": "Image data",
    "analysed_data": "Analysed data",
}
OTHER = "other"
PREFIX = "rembi:"


def section_key(name: str) -> str | None:
    """``"Image acquisition"``, ``"image-acquisition"``, ``"IMAGE_ACQUISITION"`` -> ``"image_acquisition"``;
    None when it is not a REMBI section (``"analyzed data"`` is accepted for Analysed data)."""
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    key = key.replace("analyzed", "analysed")
    return key if key in SECTIONS else None


def _target(spec: str) -> tuple[str, str] | None:
    section, dot, field = spec.partition(".")
    key = section_key(section)
    if not dot or key is None or not field.strip():
        return None
    return key, field.strip()


def validate_site_map(site_map: Mapping[str, str]) -> None:
    """ValueError naming every entry whose target is not ``"Section.field"`` with a REMBI section."""
    bad = [f"{name!r} -> {spec!r}" for name, spec in site_map.items()
           if not isinstance(spec, str) or _target(spec) is None]
    if bad:
        raise ValueError("site map entries must map to 'Section.field' with a REMBI section "
                         f"({', '.join(SECTIONS.values())}): " + "; ".join(bad))


def _place(key: str, site_map: Mapping[str, str]) -> tuple[str, str]:
    if key in site_map:
        return _target(site_map[key])  # validated
    if key.lower().startswith(PREFIX):
        target = _target(key[len(PREFIX):])
        if target:
            return target
    return OTHER, key


def to_rembi(metadata: Mapping[str, list[tuple[str, str]]],
             site_map: Mapping[str, str] | None = None) -> dict[str, dict[str, object]]:
    """``{section: {field: value or [values]}}`` for catalog metadata (``{key: [(value, units)]}``,
    as ``Catalog.metadata`` gives it). Only sections with something in them appear."""
    site_map = dict(site_map or {})
    validate_site_map(site_map)
    out: dict[str, dict[str, list]] = {}
    for key, pairs in metadata.items():
        section, field = _place(key, site_map)
        values = out.setdefault(section, {}).setdefault(field, [])
        for pair in pairs:
            value, units = (pair, "") if isinstance(pair, str) else (pair[0], pair[1] if len(pair) > 1 else "")
            values.append(f"{value} {units}" if units else value)
    return {section: {field: vs[0] if len(vs) == 1 else vs for field, vs in fields.items()}
            for section, fields in out.items()}
