"""Ships the beamline IPython profile (``profile_nanosurveyor``) as package data; ``ns-bluesky profile install`` copies it."""
