"""Command-line values checked where argparse reads them, before any command starts anything.

A value that would fail late fails here instead, in one line naming the option: a NaN rate that reached the
simulator, a scan of 10^10 points that tried to allocate 75 GiB eleven seconds in, an output file that
turned out unwritable only after the whole scan. Each ``type=`` below raises ``argparse.ArgumentTypeError``,
which :class:`OneLineParser` prints as ``PROG: error: argument --rate: ...`` and nothing else.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is the one line the other errors are (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def number(low: float | None = None, high: float | None = None, *, above: bool = False, what: str = "") -> callable:
    """A finite float in [low, high] (``above``: strictly above ``low``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if low is not None and (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {low:g}{what}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}{what}, got {text}")
        return value

    return parse


def count(low: int, high: int | None = None) -> callable:
    """An integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


#: memory a reconstruction holds per scan point (its cropped frame, float32 256^2, with the engine's buffers
#: about 4x that); a scan larger than the memory available would fail in the middle of its run
BYTES_PER_POINT = 1 << 20
#: the most points one scan may have whatever the memory (a 1000 x 1000 raster is 28 h at 10 Hz)
MAX_POINTS = 1_000_000


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (not checked)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def scan_shape(text: str) -> tuple[int, int]:
    """``40x40`` to (rows, columns); at least 2 points (one has no overlap to reconstruct from),
    and no more points than :data:`MAX_POINTS` or than this machine's memory holds for the reconstruction."""
    try:
        ny, nx = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like 40x40 (rows x columns), got {text!r}") from None
    if ny < 1 or nx < 1 or ny * nx < 2:
        raise argparse.ArgumentTypeError(f"needs at least 2 points (1x2), got {text!r}")
    points = ny * nx
    if points > MAX_POINTS:
        raise argparse.ArgumentTypeError(f"{points} points is more than the {MAX_POINTS} one scan may have")
    free = available_memory_bytes()
    if free is not None and points * BYTES_PER_POINT > free:
        raise argparse.ArgumentTypeError(
            f"{points} points need about {points * BYTES_PER_POINT / 2**30:.1f} GiB for the reconstruction; "
            f"{free / 2**30:.1f} GiB are available")
    return ny, nx


def _writable_dir(path: Path) -> Path | None:
    """The directory ``path`` is or would be created in, if it cannot be written; else None."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return probe
        probe = probe.parent
    return None if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK) else probe


def output_dir(text: str) -> str:
    """A folder the command will create or write into."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    if (blocked := _writable_dir(path)) is not None:
        raise argparse.ArgumentTypeError(f"cannot write in {blocked}")
    return text


def output_file(text: str) -> str:
    """A file the command will write (its folder created if missing)."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}")
    if (blocked := _writable_dir(path.parent)) is not None:
        raise argparse.ArgumentTypeError(f"cannot write in {blocked}")
    return text


def input_file(text: str) -> str:
    """A file the command will read."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}" if not path.exists() else f"{text} is not a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text}")
    return text
