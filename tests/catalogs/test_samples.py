"""The devstack's sample OME-Zarr images: small, deterministic, with channel and REMBI metadata,
and put into the iRODS stand-in as they are on disk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from irods_support import USERS, ZONE
from zarr_support import IMAGE_DIR

from bioimage_gateway.catalogs import IrodsCatalog, PosixCatalog
from bioimage_gateway.catalogs.zarr import describe_image
from bioimage_gateway.devstack.irods_standin import sha2
from bioimage_gateway.devstack.samples import SAMPLES, sample_data, seed_irods, write_sample_image, write_samples


def _tree(path: Path) -> dict[str, str]:
    """Relative file name -> SHA-256 of its content."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    directory = tmp_path_factory.mktemp("samples")
    return directory, write_samples(directory)


def test_demo_samples_are_small_and_described(demo):
    directory, paths = demo
    assert [p.name for p in paths] == [s.directory_name for s in SAMPLES]
    assert 2 <= len(SAMPLES) <= 3
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2 ** 20
    assert len(files) < 400  # a few hundred chunks: the devstack starts fast
    catalog = PosixCatalog()
    for spec, path in zip(SAMPLES, paths):
        d = describe_image(catalog, str(path))
        assert (d.version, d.name, d.axis_names) == ("0.4", spec.name, "tczyx")
        assert d.levels[0].shape == spec.shape_tczyx and len(d.levels) == spec.levels
        assert d.levels[0].chunks == spec.chunks
        assert [c.name for c in d.channels] == list(spec.channel_names)
        assert all(c.color and c.window["start"] < c.window["end"] for c in d.channels)
        assert d.levels[0].scale[2:] == spec.pixel_size_um
    embryo = SAMPLES[0]
    assert embryo.shape_tczyx[:2] == (2, 3)  # 3 channels, 2 timepoints
    assert any(s.shape_tczyx[2] == 1 and s.shape_tczyx[0] > 1 for s in SAMPLES)  # a 2D+t image


def test_demo_samples_carry_rembi_metadata(demo):
    _, paths = demo
    meta = PosixCatalog().metadata(str(paths[0]))
    assert meta["rembi:biosample.organism"] == [("Mus musculus", "")]
    assert meta["rembi:image_acquisition.modality"] == [("light-sheet", "")]
    assert meta["rembi:image_data.pixel_size_xy"] == [("0.5", "um")]
    assert all(key.startswith("rembi:") for spec in SAMPLES for key in spec.rembi)
    organisms = {spec.rembi["rembi:biosample.organism"] for spec in SAMPLES}
    assert len(organisms) == len(SAMPLES)  # searches can tell them apart


def test_content_is_deterministic_and_looks_like_cells(tmp_path):
    args = dict(name="det", shape_tczyx=(2, 2, 3, 48, 40), levels=2, channel_names=["a", "b"],
                chunks=(1, 1, 3, 24, 24), seed=5)
    first = write_sample_image(tmp_path / "one.ome.zarr", **args)
    second = write_sample_image(tmp_path / "two.ome.zarr", **args)
    assert _tree(first) == _tree(second)  # byte for byte
    other = write_sample_image(tmp_path / "three.ome.zarr", **{**args, "seed": 6})
    assert _tree(other)["s0/0/0/0/0/0"] != _tree(first)["s0/0/0/0/0/0"]  # another seed, other cells
    data = zarr.open_group(str(first), mode="r")["s0"][:]
    np.testing.assert_array_equal(data, sample_data((2, 2, 3, 48, 40), seed=5))
    nuclei = data[0, 0].astype(float)
    assert nuclei.max() > 5 * np.median(nuclei)  # bright objects on a dark background
    assert not np.array_equal(data[0], data[1])  # they move between timepoints
    attrs = json.loads((first / ".zattrs").read_text())
    assert attrs["multiscales"][0]["version"] == "0.4"
    assert [c["label"] for c in attrs["omero"]["channels"]] == ["a", "b"]


def test_bad_arguments_are_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="1 channel names for 2 channels"):
        write_sample_image(tmp_path / "x.ome.zarr", name="x", shape_tczyx=(1, 2, 1, 8, 8), channel_names=["a"])
    with pytest.raises(ValueError, match="needs 5 sizes"):
        write_sample_image(tmp_path / "x.ome.zarr", name="x", shape_tczyx=(8, 8))
    with pytest.raises(ValueError, match="at least 1"):
        write_sample_image(tmp_path / "x.ome.zarr", name="x", shape_tczyx=(1, 0, 1, 8, 8))
    assert not (tmp_path / "x.ome.zarr").exists()
    with pytest.raises(FileNotFoundError, match="no OME-Zarr directory"):
        seed_irods(None, ZONE, "alice", "images", tmp_path / "missing.ome.zarr")


def test_seed_irods_puts_the_tree_with_avus(irods_images, site):
    source = site / "images" / IMAGE_DIR
    with IrodsCatalog(irods_images.host, irods_images.port, "alice", ZONE, USERS["alice"]) as alice:
        image = irods_images.image
        assert image == f"irods://{ZONE}/home/alice/images/{IMAGE_DIR}"
        seen = {}
        pending = [""]
        while pending:
            rel = pending.pop()
            for entry in alice.list(f"{image}/{rel}" if rel else image):
                key = f"{rel}/{entry.name}" if rel else entry.name
                if entry.kind == "object":
                    seen[key] = (entry.size, entry.checksum)
                else:
                    pending.append(key)
        local = {str(p.relative_to(source)): p for p in source.rglob("*") if p.is_file()}
        assert set(seen) == set(local)
        for key, path in local.items():
            content = path.read_bytes()
            assert seen[key] == (len(content), sha2(content))
        meta = alice.metadata(image)
        assert meta == {
            "rembi:biosample.organism": [("Mus musculus", "")],
            "rembi:image_acquisition.modality": [("light-sheet", "")],
            "rembi:image_data.pixel_size_xy": [("0.5", "um")]}
        assert alice.stat(image).kind == "collection"
    assert os.path.isdir(source)  # the source is left as it was
