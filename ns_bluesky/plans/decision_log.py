"""The ``adaptive`` stream: each decision an adaptive plan takes, as one event, with its reasons.

Why events and not log lines: the decisions are data. The catalog keeps them with the
run, a replay or an audit reads which frames were taken again and why, and the
drift-check frames are marked so that a reconstruction leaves them out.
"""

from __future__ import annotations

import json

import numpy as np
from bluesky.utils import Msg, MsgGenerator
from ophyd import Component as Cpt
from ophyd import Device, Signal


class DecisionLog(Device):
    """One adaptive decision per event of the ``adaptive`` stream; lists are JSON strings (variable length)."""

    action = Cpt(Signal, value="", kind="hinted", doc="what was decided")
    reason = Cpt(Signal, value="", kind="normal", doc="why, in words")
    positions = Cpt(Signal, value="[]", kind="normal", doc="JSON list of (y, x) sample translations it concerns, m")
    seqs = Cpt(Signal, value="[]", kind="normal", doc="JSON list of primary event numbers it concerns")
    detail = Cpt(Signal, value="{}", kind="normal", doc="JSON object: the numbers the decision rested on; "
                 "'data': false marks drift-check frames (registered on the reference, not scan data)")


def _plain(value):
    """JSON for what ``json`` does not know: numpy values as lists, anything else as its text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def record_decision(log: DecisionLog, action: str, reason: str, positions=(), seqs=(), **detail) -> MsgGenerator:
    """Put one decision into the run's ``adaptive`` stream."""
    log.action.put(action)
    log.reason.put(reason)
    log.positions.put(json.dumps(np.asarray(positions, float).reshape(-1, 2).tolist()))
    log.seqs.put(json.dumps([int(s) for s in seqs]))
    log.detail.put(json.dumps(detail, default=_plain))
    yield Msg("create", name="adaptive")
    yield Msg("read", log)
    yield Msg("save")
