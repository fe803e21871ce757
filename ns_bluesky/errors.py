"""One error hierarchy, so callers (and the CLI) can tell a user's mistake from a bug.

Every message names the offending parameter or path and, where there is one, the fix.
"""


class NSBlueskyError(Exception):
    """Base of every error this package raises on purpose."""


class ParameterError(NSBlueskyError, ValueError):
    """A plan, device or simulation parameter is out of range or inconsistent."""


class CatalogError(NSBlueskyError, LookupError):
    """A run or catalog could not be found or opened."""


class CXIError(NSBlueskyError, ValueError):
    """A CXI file is missing a dataset or holds one of the wrong shape."""


class DeviceError(NSBlueskyError, RuntimeError):
    """A device failed to do what it was asked within its time limit."""


class ReconstructionError(NSBlueskyError, RuntimeError):
    """A reconstruction diverged (non-finite or runaway residual): its state is not an image."""


class PipelineError(NSBlueskyError, RuntimeError):
    """The processing pipeline stopped answering or died; the raw data are safe, the processing is not done."""


class DiskFullError(NSBlueskyError, OSError):
    """A disk has no room for what a run must write: refused before the run opens, or the run stopped."""


class QueueError(NSBlueskyError, RuntimeError):
    """The queue server (RE Manager) is not running, did not answer, or refused a request; the message says why."""
