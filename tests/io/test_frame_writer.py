"""The detector's HDF5 frame files: frames back as written, and the disk writes started as they go."""

import sys

import h5py
import numpy as np
import pytest

from ns_bluesky.io import frame_writer as hdf5_writer
from ns_bluesky.io.frame_writer import WRITEBACK_BYTES, HDF5FrameWriter


def test_the_disk_writes_start_and_old_frames_leave_the_cache_as_the_file_grows(tmp_path, monkeypatch):
    """A raw-frame stream must not fill the page cache until every write pays for reclaim
    (5.6-5.7 against 0.6-1.9 ms of CPU a frame); the last few frames stay cached for the bridge."""
    import os

    started, dropped = [], []
    monkeypatch.setattr(hdf5_writer, "start_writeback", started.append)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: dropped.append((offset, length, advice)))
    frames = np.random.default_rng(0).integers(0, 4000, (40, 1040, 1152), dtype=np.uint16)
    w = HDF5FrameWriter(tmp_path, "fccd_image", (1040, 1152))
    w.open()
    for frame in frames:
        w.write(frame)
    fd = w._file.id.get_vfd_handle()
    w.close()
    assert started == [fd] * (frames.nbytes // WRITEBACK_BYTES)  # about every 14 frames of 2.4 MB
    # everything but the last 64 MB dropped, each range once, in order
    assert [advice for *_, advice in dropped] == [os.POSIX_FADV_DONTNEED] * len(dropped) and dropped[0][0] == 0
    assert all(a[0] + a[1] == b[0] for a, b in zip(dropped, dropped[1:]))
    end = dropped[-1][0] + dropped[-1][1]
    assert 0 < w.path.stat().st_size - end <= hdf5_writer.KEEP_CACHED_BYTES + WRITEBACK_BYTES
    with h5py.File(w.path, "r") as f:
        np.testing.assert_array_equal(f["/entry/data/data"][()], frames)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux only")
def test_the_writeback_call_is_the_c_librarys_own(tmp_path):
    assert hdf5_writer.start_writeback is not None
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * 4096)
        assert hdf5_writer.start_writeback(f.fileno()) == 0


def test_a_file_named_by_the_caller(tmp_path):
    """An areaDetector IOC names its files from FileTemplate; the writer then files there, not in write_dir."""
    w = HDF5FrameWriter(tmp_path / "unused", "fccd_image", (4, 6))
    path = w.open(tmp_path / "scan_000003.h5")
    w.write(np.arange(24, dtype=np.uint16).reshape(4, 6))
    (name, resource), (_, datum) = list(w.collect_docs())
    w.close()
    assert path == (tmp_path / "scan_000003.h5").resolve() and not (tmp_path / "unused").exists()
    assert name == "stream_resource" and resource["uri"] == f"file://localhost{path}"
    assert datum["indices"] == {"start": 0, "stop": 1}
    with h5py.File(path, "r") as f:
        assert f["/entry/data/data"].shape == (1, 4, 6)
