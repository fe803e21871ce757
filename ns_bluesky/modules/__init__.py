"""Processing modules, each a small :class:`~ns_bluesky.stream.module.Module` subclass."""

from .echo import EchoModule
from .tally import TallyModule

__all__ = ["EchoModule", "TallyModule"]
