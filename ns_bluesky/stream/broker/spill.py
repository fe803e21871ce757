"""Backlog on disk: a queued item's message goes to a file and comes back when it is sent."""

from __future__ import annotations

from pathlib import Path

from ..protocol import Message, decode, encode


class Spill:
    """Messages of queued items written to ``directory`` (made when first needed), one file an item."""

    def __init__(self, directory: Path):
        self.dir = directory

    def put(self, item) -> None:
        """Write the item's message to disk; the item keeps only the file's path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{item.id}.msg"
        frames = encode(item.msg)
        with open(path, "wb") as f:
            f.write(len(frames).to_bytes(4, "little"))
            for fr in frames:
                b = bytes(fr)
                f.write(len(b).to_bytes(8, "little"))
                f.write(b)
        item.spill, item.msg = path, None

    def take(self, item) -> Message:
        """Read the item's message back (the file goes)."""
        with open(item.spill, "rb") as f:
            n = int.from_bytes(f.read(4), "little")
            frames = [f.read(int.from_bytes(f.read(8), "little")) for _ in range(n)]
        item.spill.unlink(missing_ok=True)
        item.msg, item.spill = decode(frames), None
        return item.msg

    def discard(self, item) -> None:
        """The item is dropped: its file, if any, goes too."""
        if item.spill is not None:
            item.spill.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every spilled file (the handler stops)."""
        if self.dir.exists():
            for f in self.dir.glob("*.msg"):
                f.unlink()
