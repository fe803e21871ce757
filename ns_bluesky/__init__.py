"""ns-bluesky: real-time streaming X-ray ptychography on the Bluesky stack.

A rebuild of the Nanosurveyor framework (Daurer et al., Adv. Struct. Chem. Imaging
3:7, 2017): an FCCD and scan stage as Ophyd devices, Bluesky plans, a document stream
into ZeroMQ processing workers and reconstructions stored back in tiled/databroker.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ns-bluesky")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
