"""HDF5 frame files and the StreamResource/StreamDatum documents that announce them.

Frames never travel inside events: one file per run, one dataset growing by one
frame per trigger (SWMR, so tiled and live readers can follow it), and one
``stream_datum`` per frame pointing at its index.

Every ``WRITEBACK_BYTES`` the writer starts the disk writes of its file (Linux
``sync_file_range``, which returns at once) and drops from the page cache what lies
more than ``KEEP_CACHED_BYTES`` behind the last frame (``posix_fadvise``; the bridge
reads frames just behind the writer). Left to the kernel, a raw-frame stream (240 MB/s
at 100 frames/s) fills the page cache, and from then on every write pays for reclaiming
pages: on the development machine 5.6-5.7 ms of CPU per 2.4 MB frame against 0.6-1.9 ms
with the early writeback and drop (900 frames a round, rounds alternated), and each
scan of a session started slower than the last (101, 81, 66 frames/s for three 30 x 30
rate-0 demos in one process). Reading a frame back later costs a disk read.

A full disk: :meth:`HDF5FrameWriter.check_room` refuses a run before it opens when the frames it
will write do not fit (the plans call it), and a write that finds the disk full after all (someone
else filled it) raises :class:`~ns_bluesky.errors.DiskFullError` naming the directory, at once: the
frames already written stay in the file, readable, and the run closes with its exit status.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from event_model import compose_stream_resource

from ..errors import DiskFullError

DATASET = "/entry/data/data"
WRITEBACK_BYTES = 32 << 20
KEEP_CACHED_BYTES = 64 << 20
#: room a run leaves free beyond its frames: HDF5's own structures, the spool, the system
MARGIN_BYTES = 1 << 20
#: what a write that finds no room fails with (no space, a quota)
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use on the disk under ``path`` (its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_room(write_dir: str | os.PathLike, frames: int, frame_bytes: int, *, what: str = "the detector") -> None:
    """``DiskFullError`` unless ``frames`` frames of ``frame_bytes`` (and a margin) fit under ``write_dir``."""
    need = frames * frame_bytes + MARGIN_BYTES
    free = free_bytes(write_dir)
    if free < need:
        raise DiskFullError(f"{what}: {frames} frames need {_size(need)} in {write_dir}, {_size(free)} is free; "
                            f"the run was not started: free space there or write the frames to another disk")


def _writeback_starter() -> Callable[[int], None] | None:
    """``fd -> sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)``, or None where the C library lacks it."""
    try:
        call = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):  # not Linux
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return lambda fd: call(fd, 0, 0, 2)  # 2: SYNC_FILE_RANGE_WRITE, start the writes and return


start_writeback = _writeback_starter()


class HDF5FrameWriter:
    """Append frames (images, or arrays of any fixed shape) of one dtype to a new file per run."""

    def __init__(self, write_dir: str | os.PathLike, data_key: str, frame_shape: tuple[int, ...], dtype: str = "<u2"):
        self.write_dir = Path(write_dir)
        self.data_key, self.frame_shape, self.dtype = data_key, tuple(frame_shape), np.dtype(dtype)
        self._file: h5py.File | None = None
        self._docs: list[tuple[str, dict]] = []
        self.path: Path | None = None
        self.frames_written = 0
        self._unsynced = 0  # bytes written since the disk writes were last started
        self._uncached_to = 0  # file offset below which the page cache was told to drop this file

    def open(self, path: str | os.PathLike | None = None) -> Path:
        """Start a new file (``path``, or a fresh name in ``write_dir``); the next documents out are its
        ``stream_resource``. A simulated areaDetector IOC names its files itself, hence ``path``."""
        self.close()
        if path is None:
            self.write_dir.mkdir(parents=True, exist_ok=True)
            path = self.write_dir / f"{uuid.uuid4()}.h5"
        self.path = Path(path).resolve()
        try:
            self._file = h5py.File(self.path, "w", libver="latest")
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                raise DiskFullError(f"{self.data_key}: no room for a new frame file in {self.path.parent} "
                                    f"({_size(free_bytes(self.path.parent))} free); the run was not started") from None
            raise
        self._ds = self._file.create_dataset(
            DATASET,
            shape=(0, *self.frame_shape),
            maxshape=(None, *self.frame_shape),
            dtype=self.dtype,
            chunks=(1, *self.frame_shape),
        )
        self._file.swmr_mode = True
        bundle = compose_stream_resource(
            mimetype="application/x-hdf5",
            uri=f"file://localhost{self.path}",
            data_key=self.data_key,
            parameters={"dataset": DATASET, "chunk_shape": (1, *self.frame_shape)},
        )
        self._compose_datum = bundle.compose_stream_datum
        self._docs = [("stream_resource", bundle.stream_resource_doc)]
        self.frames_written = 0
        self._unsynced = self._uncached_to = 0
        return self.path

    def write(self, frame: np.ndarray) -> int:
        """Append one frame, flush it to disk and queue its ``stream_datum``; returns its index."""
        if self._file is None:
            raise RuntimeError(f"{self.data_key}: write() before open(); stage the detector first")
        if frame.shape != self.frame_shape or frame.dtype != self.dtype:
            raise ValueError(
                f"{self.data_key}: frame {frame.shape} {frame.dtype} does not match the file's "
                f"{self.frame_shape} {self.dtype}"
            )
        i = self.frames_written
        try:
            self._ds.resize(i + 1, axis=0)
            # one uncompressed chunk per frame: hand HDF5 the bytes, skip its selection machinery
            self._ds.id.write_direct_chunk((i, *(0,) * len(self.frame_shape)), np.ascontiguousarray(frame).data)
            self._file.flush()  # SWMR readers (tiled, live viewers) see the frame before its datum goes out
        except OSError as exc:
            if exc.errno not in FULL_ERRNOS:
                raise
            self._cut_back(i)
            raise DiskFullError(f"{self.data_key}: the disk under {self.write_dir} is full "
                                f"({_size(free_bytes(self.path.parent))} free) at frame {i + 1} of the run; the run "
                                f"stops, its {i} frames written are kept in {self.path}") from None
        self._unsynced += frame.nbytes
        if self._unsynced >= WRITEBACK_BYTES:
            self._unsynced = 0
            self._writeback()
        # the schema check costs about 0.2 ms a frame of the RunEngine process's GIL; every datum of
        # a file comes from the same composer with integer indices, so the first one speaks for all (and
        # bluesky's TiledWriter checks every document again on its way into the catalog)
        datum = self._compose_datum(indices={"start": i, "stop": i + 1}, validate=i == 0)
        self._docs.append(("stream_datum", datum))
        self.frames_written = i + 1
        return i

    def _cut_back(self, frames: int) -> None:
        """The dataset back to the frames that are whole, so a reader never meets the one that failed."""
        try:
            self._ds.resize(frames, axis=0)
            self._file.flush()
        except OSError:
            pass  # the datums name only the whole frames either way

    def check_room(self, frames: int) -> None:
        """``DiskFullError`` now, before a run opens, unless ``frames`` frames fit in ``write_dir``."""
        check_room(self.write_dir, frames, int(np.prod(self.frame_shape)) * self.dtype.itemsize, what=self.data_key)

    def _writeback(self) -> None:
        fd = self._file.id.get_vfd_handle()
        if start_writeback is not None:
            start_writeback(fd)
        old = os.fstat(fd).st_size - KEEP_CACHED_BYTES
        if old > self._uncached_to and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, self._uncached_to, old - self._uncached_to, os.POSIX_FADV_DONTNEED)
            self._uncached_to = old

    def collect_docs(self):
        """Hand out the queued documents once each, in order."""
        docs, self._docs = self._docs, []
        yield from docs

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
