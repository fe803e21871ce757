"""``ns-bluesky ioc`` (and ``python -m ns_bluesky.apps.ioc``): the simulated beamline served over Channel Access.

A stand-in for a facility's IOCs, so the EPICS path can be run and tested on one machine: the FCCD as an
areaDetector IOC (frames filed in HDF5 by the IOC), the stage as motor records, the shutter as a bo/bi pair
and the optics as PVs, named by a beamline description (default: COSMIC-like). It binds to 127.0.0.1 unless
told otherwise; once it answers it prints one JSON line, ``{"ioc": "ready", ...}``, and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import ParameterError


def add_parser(sub) -> None:
    """The ``ioc`` subcommand of ``ns-bluesky``."""
    p = sub.add_parser(
        "ioc",
        help="serve the simulated beamline over EPICS Channel Access (caproto)",
        description="Serve the simulated FCCD (areaDetector cam1:/HDF1:, frames written to HDF5 by the IOC), "
        "the stage (motor records), the shutter (bo/bi), the optics and fault PVs (beam loss, dropped packets, "
        "saturation, drift, beam dump, full disk) as EPICS PVs named by a beamline description.",
    )
    _arguments(p)
    p.set_defaults(func=run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--description", metavar="FILE", help="beamline description, YAML or TOML (default: COSMIC-like)")
    p.add_argument("--prefix", help="PV prefix, replacing the description's (e.g. BL701:)")
    p.add_argument("--rate", type=float, default=10.0, help="detector frames per second at start; 0 = free-run (default 10)")
    p.add_argument("--port", type=int, help="Channel Access server port, UDP search and TCP (default: $EPICS_CA_SERVER_PORT or 5064)")
    p.add_argument("--interfaces", nargs="+", default=["127.0.0.1"], metavar="ADDR",
                   help="addresses to serve on (default 127.0.0.1 only)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.add_argument("--sample-image", metavar="PNG|TIFF", help="grey-scale image for the sample (default: test pattern)")
    p.add_argument("--simulation", metavar="JSON",
                   help="the simulated experiment's settings (a SimConfig, as 'ns-bluesky demo --epics' writes it: "
                   "seed, exposure, sample and its image, scan pattern); replaces --seed and --sample-image")
    p.add_argument("--no-draw-ahead", dest="draw_ahead", action="store_false",
                   help="draw each simulated frame at the trigger, not while the stage moves to it (the frames are "
                   "the same; only the IOC's timing under load differs: for benchmarks)")


def run(args: argparse.Namespace) -> int:
    from ..instrument.beamline import BeamlineDescription
    from ..io.description import load_description
    from ..io.images import read_grayscale
    from ..ophyd_devices.ioc.beamline import BeamlineIOC

    if args.rate < 0:
        raise ParameterError(f"--rate must be >= 0 frames/s (0 = free-run), got {args.rate}")
    if args.port is not None and not 0 < args.port < 65536:
        raise ParameterError(f"--port must be a port number (1-65535), got {args.port}")
    description = load_description(args.description) if args.description else BeamlineDescription()
    if args.prefix is not None:
        description = BeamlineDescription.model_validate({**description.model_dump(), "prefix": args.prefix})
    config = None
    if args.simulation:
        if args.sample_image or args.seed != 0:
            raise ParameterError("--simulation holds the seed and the sample image: drop --seed and --sample-image")
        config, image = _simulation(args.simulation)
    else:
        image = read_grayscale(args.sample_image) if args.sample_image else None
    ioc = BeamlineIOC(description, rate_hz=args.rate, seed=args.seed, image=image, config=config,
                      draw_ahead=args.draw_ahead)
    try:
        ioc.serve(port=args.port, interfaces=args.interfaces)
    except KeyboardInterrupt:
        pass
    return 0


def _simulation(path: str):
    """(SimConfig, sample image or None) from a JSON file; a bad file fails naming it."""
    from pathlib import Path

    from pydantic import ValidationError

    from ..io.images import read_grayscale
    from ..sim.settings import SimConfig

    try:
        config = SimConfig.model_validate_json(Path(path).read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "the file"
        raise ParameterError(f"--simulation {path}: {where}: {first.get('msg')}") from None
    image = config.sample.image
    return config, (None if image == "test-pattern" else read_grayscale(image))


def main(argv: Sequence[str] | None = None) -> int:
    from .guard import guarded

    p = argparse.ArgumentParser(prog="ns-bluesky ioc", description=__doc__.splitlines()[0])
    _arguments(p)
    return guarded("ns-bluesky ioc", run, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
