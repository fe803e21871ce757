"""Processing modules, each a small :class:`~ns_bluesky.stream.module.Module` subclass."""

from .cxiwrite import CXIWriteModule
from .dark import DarkModule
from .echo import EchoModule
from .frame import FrameModule
from .image import ImageModule
from .recon import ReconModule
from .tally import TallyModule

__all__ = ["CXIWriteModule", "DarkModule", "EchoModule", "FrameModule", "ImageModule", "ReconModule", "TallyModule"]
