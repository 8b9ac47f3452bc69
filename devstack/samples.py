"""Sample OME-Zarr images for the local demo and the tests: generated, deterministic, small.

``write_sample_image`` writes one OME-Zarr 0.4 image (Zarr v2) with ome-zarr's writer: a
resolution pyramid (x and y halved per level), ``omero`` channel metadata (names, colours,
display windows) and synthetic content, nuclei-like blobs that drift over time, with a membrane
and a cytoplasm channel and camera-like noise, the same bytes for the same arguments. REMBI
metadata (``rembi:...`` keys) go to the image directory's ``user.`` extended attributes, where
``PosixCatalog.metadata`` reads them, when the file system has them.

``SAMPLES`` are the demo's images (about 8 MB in 270 files together); ``write_samples`` writes
them; ``seed_irods`` puts an image into the iRODS stand-in through its seeding API, with the
REMBI metadata as AVUs on the image collection.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Channel colours used when none are given (RRGGBB, as in OMERO): green, magenta, cyan, ...
PALETTE = ("00FF00", "FF00FF", "00FFFF", "FF0000", "0000FF", "FFFF00")

RembiValue = str | tuple[str, str]  # a value, or (value, units)


@dataclass(frozen=True)
class SampleSpec:
    name: str
    shape_tczyx: tuple[int, int, int, int, int]
    channel_names: tuple[str, ...]
    chunks: tuple[int, int, int, int, int]
    levels: int = 3
    seed: int = 0
    dtype: str = "uint16"
    pixel_size_um: tuple[float, float, float] = (1.0, 1.0, 1.0)  # z, y, x
    rembi: Mapping[str, RembiValue] = field(default_factory=dict)

    @property
    def directory_name(self) -> str:
        return f"{self.name}.ome.zarr"


SAMPLES: list[SampleSpec] = [
    SampleSpec(
        name="mouse-embryo-lightsheet",
        shape_tczyx=(2, 3, 16, 160, 160),
        channel_names=("H2B-GFP", "membrane-mCherry", "brightfield"),
        chunks=(1, 1, 8, 64, 64), levels=3, seed=1, pixel_size_um=(2.0, 0.5, 0.5),
        rembi={
            "rembi:study.title": "Early mouse embryo development (synthetic demo data)",
            "rembi:study.license": "CC0",
            "rembi:biosample.organism": "Mus musculus",
            "rembi:biosample.biological_entity": "embryo, E7.5",
            "rembi:specimen.preparation_method": "live imaging in culture medium",
            "rembi:image_acquisition.modality": "light-sheet",
            "rembi:image_acquisition.instrument": "demo light-sheet microscope",
            "rembi:image_data.pixel_size_z": ("2.0", "um"),
            "rembi:image_data.pixel_size_xy": ("0.5", "um"),
        }),
    SampleSpec(
        name="hela-cells-timelapse",
        shape_tczyx=(5, 2, 1, 256, 256),
        channel_names=("nuclei-Hoechst", "tubulin-GFP"),
        chunks=(1, 1, 1, 128, 128), levels=3, seed=2, pixel_size_um=(1.0, 0.2, 0.2),
        rembi={
            "rembi:study.title": "HeLa cells through mitosis (synthetic demo data)",
            "rembi:biosample.organism": "Homo sapiens",
            "rembi:biosample.biological_entity": "HeLa cell line",
            "rembi:image_acquisition.modality": "widefield fluorescence",
            "rembi:image_data.pixel_size_xy": ("0.2", "um"),
            "rembi:image_data.time_interval": ("300", "s"),
        }),
    SampleSpec(
        name="zebrafish-section",
        shape_tczyx=(1, 1, 1, 384, 384),
        channel_names=("DAPI",),
        chunks=(1, 1, 1, 128, 128), levels=3, seed=3, dtype="uint8", pixel_size_um=(1.0, 0.65, 0.65),
        rembi={
            "rembi:study.title": "Zebrafish tissue section (synthetic demo data)",
            "rembi:biosample.organism": "Danio rerio",
            "rembi:specimen.preparation_method": "cryosection, DAPI stain",
            "rembi:image_acquisition.modality": "confocal",
        }),
]


def sample_data(shape_tczyx: Sequence[int], *, seed: int = 0, dtype: str = "uint16") -> np.ndarray:
    """Synthetic cells: per timepoint, nuclei (channel 0), their membranes (1), cytoplasm (2, ...)
    as soft blobs that drift, plus background and noise. Deterministic for ``seed``."""
    t_n, c_n, z_n, y_n, x_n = (int(s) for s in shape_tczyx)
    if min(t_n, c_n, z_n, y_n, x_n) < 1:
        raise ValueError(f"every size in shape_tczyx must be at least 1: {tuple(shape_tczyx)}")
    rng = np.random.default_rng(seed)
    count = max(3, min(60, (y_n * x_n) // 1500))
    centres = rng.uniform((0, 0, 0), (z_n, y_n, x_n), size=(count, 3))
    radii = rng.uniform(3.0, max(4.0, min(y_n, x_n) / 9), size=count)
    drift = np.cumsum(rng.normal(0, 1.5, size=(t_n, count, 3)), axis=0)
    drift[0] = 0
    drift[..., 0] *= 0.2  # little movement in z
    brightness = rng.uniform(0.4, 1.0, size=(c_n, count))
    z_aspect = 0.5 if z_n > 1 else 1.0
    zz, yy, xx = np.ogrid[:z_n, :y_n, :x_n]
    out = np.empty((t_n, c_n, z_n, y_n, x_n), dtype=np.float32)
    for t in range(t_n):
        dist2 = [((zz - (cz + dz)) / z_aspect) ** 2 + (yy - (cy + dy)) ** 2 + (xx - (cx + dx)) ** 2
                 for (cz, cy, cx), (dz, dy, dx) in zip(centres, drift[t])]
        for c in range(c_n):
            volume = np.zeros((z_n, y_n, x_n), dtype=np.float32)
            for i, d2 in enumerate(dist2):
                r = radii[i]
                if c == 0:  # nucleus: a bright soft ball
                    blob = np.exp(-d2 / (2 * (0.6 * r) ** 2))
                elif c == 1:  # membrane: a shell around it
                    blob = np.exp(-((np.sqrt(d2) - 1.4 * r) ** 2) / (2 * (0.18 * r) ** 2))
                else:  # cytoplasm: dim and wide
                    blob = 0.5 * np.exp(-d2 / (2 * (1.3 * r) ** 2))
                volume += brightness[c, i] * blob.astype(np.float32)
            out[t, c] = volume
    info = np.iinfo(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else None
    top = min(info.max * 0.8, 3000.0) if info else 1.0
    background = 0.03 * top
    out = background + top * np.clip(out, 0, 1.2) / 1.2
    out += rng.normal(0, 0.02 * top, size=out.shape).astype(np.float32)  # read noise
    if info:
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dtype)


def _channels(data: np.ndarray, names: Sequence[str], colors: Sequence[str] | None) -> list[dict]:
    info = np.iinfo(data.dtype) if np.issubdtype(data.dtype, np.integer) else None
    channels = []
    for c, name in enumerate(names):
        plane = data[:, c]
        low, high = (float(v) for v in np.percentile(plane, (1, 99.8)))
        channels.append({
            "label": str(name),
            "color": (colors[c] if colors else PALETTE[c % len(PALETTE)]).lstrip("#").upper(),
            "active": True,
            "coefficient": 1,
            "family": "linear",
            "inverted": False,
            "window": {"start": low, "end": high,
                       "min": float(info.min) if info else 0.0, "max": float(info.max) if info else 1.0},
        })
    return channels


def write_sample_image(path: str | os.PathLike, *, name: str,
                       shape_tczyx: Sequence[int] = (2, 3, 16, 160, 160), levels: int = 3,
                       channel_names: Sequence[str] | None = None,
                       chunks: Sequence[int] | None = None, seed: int = 0, dtype: str = "uint16",
                       colors: Sequence[str] | None = None,
                       pixel_size_um: Sequence[float] = (1.0, 1.0, 1.0),
                       rembi: Mapping[str, RembiValue] | None = None) -> Path:
    """Write an OME-Zarr 0.4 image at ``path`` (replaced if it exists); returns ``path``.

    ``levels`` resolution levels (x and y halved each time, named ``s0``, ``s1``, ...);
    ``chunks`` in (t, c, z, y, x) order (default: one plane of up to 128 x 128 per chunk);
    ``channel_names`` one per channel (default ``channel 0``, ...); ``rembi`` metadata
    (``{"rembi:biosample.organism": "Mus musculus"}``, a value or ``(value, units)``) are
    written as ``user.`` extended attributes of the image directory where the file system
    allows (``user.rembi:image_data.pixel_size_xy`` = ``0.5``, ``...@units`` = ``um``)."""
    import dask
    import zarr
    from ome_zarr.format import FormatV04
    with warnings.catch_warnings():  # ome-zarr 0.18 warns about its own deprecated Scaler on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_image

    shape = tuple(int(s) for s in shape_tczyx)
    if len(shape) != 5:
        raise ValueError(f"shape_tczyx needs 5 sizes (t, c, z, y, x), not {shape}")
    if levels < 1:
        raise ValueError("levels must be at least 1")
    names = list(channel_names) if channel_names is not None else [f"channel {i}" for i in range(shape[1])]
    if len(names) != shape[1]:
        raise ValueError(f"{len(names)} channel names for {shape[1]} channels")
    chunks = tuple(int(c) for c in chunks) if chunks else (1, 1, 1, min(128, shape[3]), min(128, shape[4]))
    if len(chunks) != 5:
        raise ValueError(f"chunks needs 5 sizes (t, c, z, y, x), not {chunks}")
    path = Path(path)
    data = sample_data(shape, seed=seed, dtype=dtype)
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    z, y, x = (float(v) for v in pixel_size_um)
    with dask.config.set(scheduler="synchronous"):  # small images: no thread pool needed
        write_image(data, group, scale_factors=[2 ** i for i in range(1, levels)], fmt=FormatV04(),
                    axes="tczyx", name=name,
                    scale={"t": 1.0, "c": 1.0, "z": z, "y": y, "x": x},
                    axes_units={"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"},
                    storage_options={"chunks": chunks},
                    omero={"name": name, "version": "0.4", "channels": _channels(data, names, colors),
                           "rdefs": {"defaultT": 0, "defaultZ": shape[2] // 2, "model": "color"}})
    if rembi:
        set_xattrs(path, rembi)
    return path


def rembi_avus(rembi: Mapping[str, RembiValue]) -> list[tuple[str, str, str]]:
    """``(attribute, value, units)`` triples for REMBI metadata."""
    out = []
    for key, value in rembi.items():
        value, units = value if isinstance(value, tuple) else (value, "")
        out.append((str(key), str(value), str(units)))
    return out


def set_xattrs(path: str | os.PathLike, rembi: Mapping[str, RembiValue]) -> bool:
    """REMBI metadata as ``user.`` extended attributes of ``path`` (units in ``user.<key>@units``,
    as ``PosixCatalog`` reads them); False when the file system does not take them."""
    try:
        for key, value, units in rembi_avus(rembi):
            os.setxattr(path, f"user.{key}", value.encode())
            if units:
                os.setxattr(path, f"user.{key}@units", units.encode())
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    return True


def write_samples(directory: str | os.PathLike, samples: Sequence[SampleSpec] = SAMPLES) -> list[Path]:
    """Write ``samples`` into ``directory`` (``<name>.ome.zarr`` each); returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [write_sample_image(directory / s.directory_name, name=s.name, shape_tczyx=s.shape_tczyx,
                               levels=s.levels, channel_names=s.channel_names, chunks=s.chunks,
                               seed=s.seed, dtype=s.dtype, pixel_size_um=s.pixel_size_um, rembi=s.rembi)
            for s in samples]


def seed_irods(standin_catalogue, zone: str, owner: str, collection: str, image_path: str | os.PathLike,
               metadata: Mapping[str, RembiValue] | None = None) -> str:
    """Put the OME-Zarr tree at ``image_path`` into the iRODS stand-in as the collection
    ``<collection>/<image directory name>``, owned by ``owner``, with ``metadata`` as AVUs on
    that collection. ``collection`` is a logical path, or one relative to ``/<zone>/home/<owner>``.
    ``standin_catalogue`` is an ``irods_standin.Catalogue`` (``IrodsStandin.catalogue()``).
    Returns the image collection's logical path."""
    image_path = Path(image_path)
    if not image_path.is_dir():
        raise FileNotFoundError(f"no OME-Zarr directory at {image_path}")
    if not collection.startswith("/"):
        collection = f"/{zone}/home/{owner}/{collection}".rstrip("/")
    image_coll = f"{collection.rstrip('/')}/{image_path.name}"
    standin_catalogue.seed_collection(image_coll, owner)
    for folder, dirs, files in os.walk(image_path):
        dirs.sort()
        rel = os.path.relpath(folder, image_path)
        target = image_coll if rel == "." else f"{image_coll}/{rel}"
        if files:
            standin_catalogue.seed_objects(
                target, owner, ((name, Path(folder, name).read_bytes()) for name in sorted(files)))
        else:
            standin_catalogue.seed_collection(target, owner)
    for attribute, value, units in rembi_avus(metadata or {}):
        standin_catalogue.seed_metadata(image_coll, attribute, value, units)
    return image_coll
