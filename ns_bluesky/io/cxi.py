"""CXI 1.6 files for ptychography (CXIDB layout; ``shared/reference/cxi-and-users.md``).

Written the way readers expect (PtyPy's ALS loader, ptychodus, SHARP): frames under
``entry_1/instrument_1/detector_1/data`` with ``data_1`` links, translations in metres
under ``sample_1/geometry_1``, energy in joules, reconstructions as ``image_N`` groups.
Our own extras live under ``entry_1/ns_bluesky``. Frames are appended one block at a
time so a 1600-frame scan never has to sit in memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import CXIError

CXI_VERSION = 160
ENTRY = "entry_1"
DETECTOR = f"{ENTRY}/instrument_1/detector_1"
SOURCE = f"{ENTRY}/instrument_1/source_1"
TRANSLATION = f"{ENTRY}/sample_1/geometry_1/translation"
EXTRAS = f"{ENTRY}/ns_bluesky"


@dataclass
class CXIImage:
    """A product image (object, probe, STXM...) as an ``image_N`` group."""

    data: np.ndarray
    data_type: str  # "object", "probe", "stxm"...
    pixel_size_m: tuple[float, float]  # (y, x)
    data_space: str = "real"
    extra: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class CXIData:
    """The contents of a ptychography CXI file; ``frames`` may be an open h5py dataset (lazy)."""

    frames: Any
    translations_m: np.ndarray  # (N, 3) x, y, z of the probe on the sample (minus the stage translation)
    energy_J: float
    distance_m: float
    pixel_size_m: tuple[float, float]  # (y, x)
    dark: np.ndarray | None = None
    probe: np.ndarray | None = None
    mask: np.ndarray | None = None
    images: list[CXIImage] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


class CXIWriter:
    """Create a CXI file and fill it frame block by frame block."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        frame_shape: tuple[int, int],
        frame_dtype: str | np.dtype,
        energy_J: float,
        distance_m: float,
        pixel_size_m: tuple[float, float],
        metadata: dict[str, Any] | None = None,
    ):
        for name, value in (("energy_J", energy_J), ("distance_m", distance_m)):
            if not (np.isfinite(value) and value > 0):
                raise CXIError(f"{name} must be a positive number in SI units, got {value!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = h5py.File(self.path, "w")
        f = self._f
        f["cxi_version"] = CXI_VERSION
        f["number_of_entries"] = 1
        entry = f.create_group(ENTRY)
        md = metadata or {}
        entry["start_time"] = md.get("start_time", datetime.now(timezone.utc).isoformat())
        entry["program_name"] = "ns-bluesky"
        entry["title"] = md.get("title", "ptychography scan")
        if "experiment_identifier" in md:
            entry["experiment_identifier"] = md["experiment_identifier"]
        f[f"{ENTRY}/instrument_1/name"] = md.get("instrument", "simulated COSMIC-like STXM")
        f[f"{SOURCE}/energy"] = float(energy_J)
        f[f"{SOURCE}/energy"].attrs["units"] = "J"
        hc = 6.62607015e-34 * 299792458.0
        f[f"{SOURCE}/wavelength"] = hc / float(energy_J)
        det = f.require_group(DETECTOR)
        py, px = (float(p) for p in pixel_size_m)
        ny, nx = frame_shape
        det["distance"] = float(distance_m)
        det["x_pixel_size"], det["y_pixel_size"] = px, py
        det["corner_position"] = np.array([nx / 2 * px, ny / 2 * py, float(distance_m)])
        det["basis_vectors"] = np.array([[0.0, -py, 0.0], [-px, 0.0, 0.0]])
        self._data = det.create_dataset(
            "data", shape=(0, ny, nx), maxshape=(None, ny, nx), dtype=frame_dtype, chunks=(1, ny, nx)
        )
        self._data.attrs["axes"] = "translation:y:x"
        sample = f.require_group(f"{ENTRY}/sample_1")
        sample["name"] = md.get("sample_name", "unnamed")
        self._trans = f.require_group(f"{ENTRY}/sample_1/geometry_1").create_dataset(
            "translation", shape=(0, 3), maxshape=(None, 3), dtype="f8"
        )
        self._trans.attrs["units"] = "m"
        det["translation"] = h5py.SoftLink(f"/{TRANSLATION}")
        data1 = f.require_group(f"{ENTRY}/data_1")
        data1["data"] = h5py.SoftLink(f"/{DETECTOR}/data")
        data1["translation"] = h5py.SoftLink(f"/{TRANSLATION}")
        extras = f.require_group(EXTRAS)
        extras["metadata_json"] = json.dumps(md, default=str)
        self._images = 0

    def append(self, frames: np.ndarray, translations_m: np.ndarray) -> None:
        """Add a block of frames ``(n, ny, nx)`` and their translations ``(n, 3)`` (x, y, z): where the
        probe is on the sample, minus the stage's reading (as ptychodus reads and writes them)."""
        frames = np.asarray(frames)
        trans = np.asarray(translations_m, dtype=float).reshape(-1, 3)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.shape[1:] != self._data.shape[1:]:
            raise CXIError(f"frame shape {frames.shape[1:]} does not match the file's {self._data.shape[1:]}")
        if len(trans) != len(frames):
            raise CXIError(f"{len(frames)} frames but {len(trans)} translations")
        n0 = self._data.shape[0]
        self._data.resize(n0 + len(frames), axis=0)
        self._data[n0:] = frames
        self._trans.resize(n0 + len(frames), axis=0)
        self._trans[n0:] = trans

    def write_dark(self, dark: np.ndarray) -> None:
        dark = np.asarray(dark)
        if dark.shape[-2:] != self._data.shape[1:]:
            raise CXIError(f"dark frame shape {dark.shape[-2:]} does not match the data's {self._data.shape[1:]}")
        ds = self._f[DETECTOR].create_dataset("data_dark", data=dark, chunks=(1, *dark.shape[-2:]) if dark.ndim == 3 else None)
        ds.attrs["axes"] = "translation:y:x" if dark.ndim == 3 else "y:x"

    def write_mask(self, mask: np.ndarray) -> None:
        self._f[DETECTOR]["mask"] = np.asarray(mask, dtype=np.uint32)

    def write_probe(self, probe: np.ndarray) -> None:
        """Starting probe guess, as SHARP and PtyPy read it (``source_1/illumination``)."""
        self._f[SOURCE]["illumination"] = np.asarray(probe, dtype=np.complex64)

    def write_extra(self, name: str, value: Any) -> None:
        self._f[EXTRAS][name] = value

    def add_image(self, image: CXIImage) -> str:
        self._images += 1
        return _write_image(self._f, self._images, image)

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> CXIWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_image(f: h5py.File, n: int, image: CXIImage) -> str:
    name = f"{ENTRY}/image_{n}"
    g = f.create_group(name)
    g["data"] = image.data
    g["data_type"] = image.data_type
    g["data_space"] = image.data_space
    g["is_fft_shifted"] = 0
    g["y_pixel_size"], g["x_pixel_size"] = (float(p) for p in image.pixel_size_m)
    # the CXI field for the extent (x, y, z in metres); ptychodus takes the pixel size from it
    h, w = np.shape(image.data)[-2:]
    g["image_size"] = np.array([w * image.pixel_size_m[1], h * image.pixel_size_m[0], 0.0])
    for key, value in image.extra.items():
        g[key] = value
    return name


def put_image(path: str | os.PathLike, n: int, image: CXIImage) -> str:
    """Write ``image_n``, replacing what was there (a reconstruction's probe is image_1, its object image_2)."""
    with h5py.File(path, "a") as f:
        if f"{ENTRY}/image_{n}" in f:
            del f[f"{ENTRY}/image_{n}"]
        return _write_image(f, n, image)


def append_image(path: str | os.PathLike, image: CXIImage) -> str:
    """Add a product (``image_N``, the next free N) to an existing CXI file."""
    with h5py.File(path, "a") as f:
        n = 1
        while f"{ENTRY}/image_{n}" in f:
            n += 1
        return _write_image(f, n, image)


def write_cxi(path: str | os.PathLike, data: CXIData) -> Path:
    """Write a whole :class:`CXIData` at once."""
    frames = np.asarray(data.frames)
    with CXIWriter(
        path,
        frame_shape=frames.shape[1:],
        frame_dtype=frames.dtype,
        energy_J=data.energy_J,
        distance_m=data.distance_m,
        pixel_size_m=data.pixel_size_m,
        metadata=data.metadata,
    ) as w:
        w.append(frames, data.translations_m)
        if data.dark is not None:
            w.write_dark(data.dark)
        if data.mask is not None:
            w.write_mask(data.mask)
        if data.probe is not None:
            w.write_probe(data.probe)
        for image in data.images:
            w.add_image(image)
    return Path(path)


def _need(f: h5py.File, path: str, what: str):
    if path not in f:
        raise CXIError(f"{f.filename}: missing {what} at /{path}")
    return f[path]


def _scalar(f: h5py.File, path: str, what: str) -> float:
    value = np.asarray(_need(f, path, what)[()])
    if value.size != 1 or not np.issubdtype(value.dtype, np.number):
        raise CXIError(f"{f.filename}: {what} at /{path} must be a single number, got shape {value.shape}")
    return float(value.ravel()[0])


def read_cxi(path: str | os.PathLike, *, lazy: bool = False) -> CXIData:
    """Read a ptychography CXI file; errors name the dataset that is missing or wrong.

    With ``lazy=True`` the frames stay an open h5py dataset (the file stays open until
    the returned object's ``frames.file`` is closed).
    """
    path = Path(path)
    if not path.is_file():
        raise CXIError(f"no CXI file at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CXIError(f"{path} is not an HDF5/CXI file: {exc}") from None
    try:
        frames_ds = f.get(f"{ENTRY}/data_1/data") or _need(f, f"{DETECTOR}/data", "diffraction frames")
        if frames_ds.ndim != 3:
            raise CXIError(f"{path}: frames at /{DETECTOR}/data must be 3-D (N, y, x), got shape {frames_ds.shape}")
        trans = np.asarray(_need(f, TRANSLATION, "sample translations")[()], dtype=float)
        if trans.ndim != 2 or trans.shape[1] != 3 or len(trans) != frames_ds.shape[0]:
            raise CXIError(
                f"{path}: translations at /{TRANSLATION} must be ({frames_ds.shape[0]}, 3) metres, got {trans.shape}"
            )
        energy = _scalar(f, f"{SOURCE}/energy", "photon energy (J)")
        distance = _scalar(f, f"{DETECTOR}/distance", "detector distance (m)")
        px = _scalar(f, f"{DETECTOR}/x_pixel_size", "detector pixel size (m)")
        py = _scalar(f, f"{DETECTOR}/y_pixel_size", "detector pixel size (m)")
        dark = f[f"{DETECTOR}/data_dark"][()] if f"{DETECTOR}/data_dark" in f else None
        mask = f[f"{DETECTOR}/mask"][()] if f"{DETECTOR}/mask" in f else None
        probe = f[f"{SOURCE}/illumination"][()] if f"{SOURCE}/illumination" in f else None
        images = []
        n = 1
        while f"{ENTRY}/image_{n}" in f:
            g = f[f"{ENTRY}/image_{n}"]
            dtype = g["data_type"][()] if "data_type" in g else b"unknown"
            images.append(
                CXIImage(
                    data=g["data"][()],
                    data_type=dtype.decode() if isinstance(dtype, bytes) else str(dtype),
                    pixel_size_m=(float(g["y_pixel_size"][()]), float(g["x_pixel_size"][()]))
                    if "y_pixel_size" in g
                    else (py, px),
                )
            )
            n += 1
        md = {}
        if f"{EXTRAS}/metadata_json" in f:
            md = json.loads(f[f"{EXTRAS}/metadata_json"][()])
        frames = frames_ds if lazy else frames_ds[()]
        return CXIData(
            frames=frames,
            translations_m=trans,
            energy_J=energy,
            distance_m=distance,
            pixel_size_m=(py, px),
            dark=dark,
            probe=probe,
            mask=mask,
            images=images,
            metadata=md,
        )
    except CXIError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:  # a damaged file: h5py's words, with its name
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CXIError(f"{path}: cannot read it as CXI (damaged or not written as CXI?): {first}") from None
    finally:
        if not lazy:
            f.close()
