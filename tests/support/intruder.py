"""An unauthorised peer against a running pipeline: register, submit, subscribe, command; print what came back.

Run as a script (``python intruder.py ENDPOINTS_JSON [WAIT_S]``), also as another user
(``runuser -u nobody``), so it imports only the standard library and pyzmq, and speaks
the wire format by hand. ``ENDPOINTS_JSON`` maps ``control``, ``ingest``, ``workers`` and
``results`` to lists of endpoints to try (the pipeline's ipc files, its TCP ports). It
prints one JSON object: per socket, how many messages the pipeline sent back, and any
error met while connecting (a refused ipc connect shows nothing: libzmq retries quietly).
"""

from __future__ import annotations

import json
import sys
import time

import zmq


def header(kind: str, **fields) -> bytes:
    return json.dumps({"v": 1, "kind": kind, "run": fields.pop("run", ""), "seq": fields.pop("seq", -1), "stage": "",
                       "arrays": fields.pop("arrays", []), **fields}).encode()


def attack(endpoints: dict[str, list[str]], wait_s: float) -> dict:
    ctx = zmq.Context()
    socks, got, errors = {}, {name: 0 for name in endpoints}, {}
    kinds = {"control": zmq.REQ, "ingest": zmq.DEALER, "workers": zmq.DEALER, "results": zmq.SUB}
    for name, addresses in endpoints.items():
        sock = ctx.socket(kinds[name])
        sock.setsockopt(zmq.LINGER, 0)
        if name == "results":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        for address in addresses:
            try:
                sock.connect(address)
            except zmq.ZMQError as exc:
                errors[f"{name} {address}"] = str(exc)
        socks[name] = sock
    time.sleep(0.3)
    # the takeover of issue 22: many credits, a frame, a command to stop the pipeline
    sends = [("workers", [header("ready", module="echo", credits=64, pid=1)])]
    sends += [("ingest", [header("start", run="intruder", start={"uid": "intruder", "num_points": 3})])]
    sends += [("ingest", [header("frame", run="intruder", seq=seq, arrays=[{"name": "raw", "dtype": "|u1", "shape": [64]}]), bytes(64)])
              for seq in (1, 2, 3)]
    sends += [("control", [header("command", command="stop", args={})])]
    for name, frames in sends:
        try:
            socks[name].send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # no connection at all: nothing could be sent
            errors[f"{name} send"] = str(exc)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for name, sock in socks.items():
            while sock.poll(0):
                sock.recv_multipart()
                got[name] += 1
        time.sleep(0.02)
    for sock in socks.values():
        sock.close(linger=0)
    ctx.term()
    return {"received": got, "errors": errors}


if __name__ == "__main__":
    print(json.dumps(attack(json.loads(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 2.0)))
