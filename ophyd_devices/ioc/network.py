"""Channel Access kept on loopback: ports free for both UDP and TCP, and the environment clients and IOCs need.

A CA server answers name searches on a UDP port and serves on a TCP port (caproto tries the same number
first); a port taken for either fails the IOC or sends searches to a stranger. Clients (libca, read by pyepics
when Ophyd is imported) find IOCs only through ``EPICS_CA_ADDR_LIST`` with automatic broadcast off, so
nothing leaves 127.0.0.1 (``shared/reference/epics.md``, section 4).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence


def free_ca_ports(n: int = 1) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 for both UDP and TCP right now."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        if port not in ports:
            ports.append(port)
    return ports


def client_env(ports: Sequence[int]) -> dict[str, str]:
    """What a CA client needs to find IOCs on these loopback ports, and nowhere else."""
    return {
        "EPICS_CA_ADDR_LIST": " ".join(f"127.0.0.1:{p}" for p in ports),
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
    }


def server_env(port: int) -> dict[str, str]:
    """What a caproto IOC needs to serve on ``port`` of 127.0.0.1 only, beacons included."""
    return {
        "EPICS_CA_SERVER_PORT": str(port),
        "EPICS_CAS_SERVER_PORT": str(port),
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    }
