"""Processing modules, each a small :class:`~ns_bluesky.stream.module.Module` subclass."""

from .echo import EchoModule

__all__ = ["EchoModule"]
