"""The simulated IOC for the EPICS tests: started in a subprocess on the session's loopback CA ports, stopped at
teardown whatever the test did (tests/support/epics.py)."""

from __future__ import annotations

import pytest

from tests.support.epics import IOCProcess


@pytest.fixture
def start_ioc(tmp_path):
    """``start_ioc(**kwargs) -> IOCProcess``; every IOC it started is stopped after the test."""
    started: list[IOCProcess] = []

    def start(**kwargs) -> IOCProcess:
        ioc = IOCProcess(tmp_path, **kwargs)
        started.append(ioc)
        return ioc

    yield start
    for ioc in started:
        ioc.stop()


@pytest.fixture(scope="module")
def module_ioc(tmp_path_factory):
    """One IOC for a whole test module (free-running detector), stopped when the module is done."""
    ioc = IOCProcess(tmp_path_factory.mktemp("ioc"), rate_hz=0.0)
    yield ioc
    ioc.stop()
