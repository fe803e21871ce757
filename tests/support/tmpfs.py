"""A small tmpfs of the test's own: a disk that really fills (``mount -t tmpfs``, root only).

``with small_disk(path, "4m") as disk:`` mounts it at ``path`` and unmounts it on the way out, whatever
happened; without root, or where mount fails (a container without the capability), the test is skipped with
the reason printed. ``fill(disk)`` writes a filler file until the disk refuses a byte more.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m"):
    if os.geteuid() != 0:
        reason = "a full-disk test mounts a small tmpfs, which needs root; run as root to include it"
        print(reason)
        pytest.skip(reason)
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}"
        print(reason)
        pytest.skip(reason)
    try:
        yield path
    finally:
        for _ in range(20):  # a file still open (a dying server) makes umount busy for a moment
            if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode == 0:
                break
            subprocess.run(["sleep", "0.5"], timeout=5)
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(disk: Path, name: str = "filler") -> int:
    """Fill ``disk`` to the last byte with one file; returns its size."""
    chunk = b"\0" * (1 << 16)
    written = 0
    fd = os.open(disk / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                n = os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]
                if not chunk:
                    return written
                continue
            written += n
    finally:
        os.close(fd)
