"""The simulated beamline as EPICS hardware: a caproto IOC serving the FCCD (areaDetector), stage (motor
records), shutter (bo/bi) and optics under the names a beamline description gives.

It is simulated hardware, so it may use the simulator (the import contracts let it); ``ns-bluesky ioc``
(``ns_bluesky.apps.ioc``) runs it. ``network`` holds the loopback Channel Access settings and imports
nothing else, so a process can use it before Ophyd (and libca) start.
"""
