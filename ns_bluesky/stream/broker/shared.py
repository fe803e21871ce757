"""Shared results: state (a dark's statistics) that every worker of the consuming modules needs.

A result whose stage a module declares in ``shared_outputs`` is not an item for one
worker: it goes to each worker of the modules that consume the stage, and is kept
(the latest few) for workers that register later, who get it before any item.
"""

from __future__ import annotations

from ..protocol import Message

MAX_SHARED = 4  # shared results kept for workers that register later (each a dark: about 15 MB)


class SharedItems:
    """The latest shared results by (stage, run), oldest first; handed out through ``scheduler``."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.stages = {stage for mod in scheduler.modules.values() for stage in mod.shared_outputs}
        self.latest: dict[tuple[str, str], Message] = {}

    def __contains__(self, key: tuple[str, str]) -> bool:
        """Has the shared result of (stage, run) been handed out."""
        return key in self.latest

    def share(self, msg: Message) -> None:
        """Send to every worker of the consuming modules, keep for later ones."""
        self.latest.pop((msg.stage, msg.run), None)
        self.latest[(msg.stage, msg.run)] = msg
        while len(self.latest) > MAX_SHARED:
            del self.latest[next(iter(self.latest))]
        self.scheduler.broadcast(self.scheduler.consumers.get(msg.stage, ()), msg)

    def replay(self, worker, mod) -> None:
        """A worker that just registered gets the kept results its module consumes."""
        for (stage, _), shared in self.latest.items():
            if stage in mod.inputs:
                self.scheduler.send(worker, self.scheduler.new_item(mod.spec.name, shared, broadcast=True))
