"""Ships the beamline IPython profile (``profile_nanosurveyor``) as package data."""

from pathlib import Path

PROFILE_DIR = Path(__file__).parent / "profile_nanosurveyor"
