"""The queue commands without a manager: parameters as typed, the items they make, the plans' signatures as the
queue server reads them, and the one-line error when no manager runs."""

from __future__ import annotations

import json
import tempfile

import pytest

from ns_bluesky.io.queue_client import QueueState, parse_params, plan_item, refusal_reason, write_private
from ns_bluesky.stream.config import free_loopback_ports
from tests.support.queue_server import run_queue_cli


def test_parameters_read_as_a_user_types_them():
    args, kwargs = parse_params(["shape=3,3", "overlap=0.5", "sample=gold", "drift_check=false", "md={\"a\": 1}",
                                 "dark_uid=none", "num=20"])
    assert args == [] and kwargs == {"shape": [3, 3], "overlap": 0.5, "sample": "gold", "drift_check": False,
                                     "md": {"a": 1}, "dark_uid": None, "num": 20}


def test_the_profiles_devices_are_filled_in():
    assert plan_item("ptycho_scan", kwargs={"shape": [3, 3]})["args"] == ["fccd", "stage", "shutter"]
    assert plan_item("dark_frames", kwargs={"num": 3})["args"] == ["fccd", "shutter"]
    item = plan_item("ptycho_scan", kwargs={"det": "fccd2"})  # one given by name: the others by name too
    assert item["args"] == [] and item["kwargs"] == {"det": "fccd2", "stage": "stage", "shutter": "shutter"}


def test_a_refusal_is_one_line_naming_the_parameter():
    msg = ("Request failed: Failed to add an item: Plan validation failed: 1 validation error for Model\nshape\n"
           "  'str' instances are not allowed as a Sequence value [type=sequence_str, input_value='abc']\n"
           "Plan: {'name': 'ptycho_scan'}")
    assert refusal_reason(msg) == "shape: 'str' instances are not allowed as a Sequence value"


def test_the_plans_signatures_let_the_queue_server_check_their_parameters():
    profile_ops = pytest.importorskip("bluesky_queueserver.manager.profile_ops")
    from ns_bluesky.ophyd_devices import make_beamline
    from ns_bluesky.plans import adaptive_ptycho, dark_frames, ptycho_scan

    bl = make_beamline(None, tempfile.mkdtemp(), rate_hz=10)
    ns = dict(fccd=bl.fccd, stage=bl.stage, shutter=bl.shutter, optics=bl.optics, ptycho_scan=ptycho_scan,
              dark_frames=dark_frames, adaptive_ptycho=adaptive_ptycho)
    plans, devices, _, _ = profile_ops.existing_plans_and_devices_from_nspace(nspace=ns)

    def check(name, **kwargs):
        return profile_ops.validate_plan(plan_item(name, kwargs=kwargs), allowed_plans=plans, allowed_devices=devices)

    assert check("ptycho_scan", shape=[3, 3], pattern="fermat", overlap=0.5) == (True, "")
    assert check("adaptive_ptycho", shape=[4, 4], drift_check=False) == (True, "")  # feedback: the session's
    assert check("adaptive_ptycho", pattern="fermat", num_points=144) == (True, "")
    assert not check("adaptive_ptycho", pattern="spiral")[0]
    assert check("dark_frames", num=3) == (True, "")
    assert not check("ptycho_scan", shape="abc")[0] and not check("ptycho_scan", pattern="spiral")[0]
    assert not check("dark_frames", num="many")[0] and not check("adaptive_ptycho", coarse_every=1.5)[0]


def test_without_a_manager_every_command_says_so_in_one_line(tmp_path):
    for action in ("status", "run", "history"):
        result = run_queue_cli(action, "--dir", str(tmp_path / "none"))
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "no queue server is running" in result.stderr and "ns-bluesky queue start" in result.stderr
    # a manager that was started and is gone: the state is there, nothing answers
    (port,) = free_loopback_ports(1)
    tmp_path.chmod(0o700)
    QueueState(f"tcp://127.0.0.1:{port}", 999_999, 999_998, 1, "cat", "startup", 0.0).save(tmp_path)
    import zmq

    write_private(tmp_path / "control.key.pub", zmq.curve_keypair()[0].decode())
    result = run_queue_cli("add", "ptycho_scan", "shape=3,3", "--dir", str(tmp_path), "--timeout", "0.5")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"no queue server answers at tcp://127.0.0.1:{port}" in result.stderr
    assert json.loads((tmp_path / "queue.json").read_text())["manager_pid"] == 999_999


def test_a_key_others_may_read_is_refused(tmp_path):
    QueueState("tcp://127.0.0.1:1", 1, 1, 1, "cat", "startup", 0.0).save(tmp_path)
    (tmp_path / "control.key.pub").write_text("x" * 40)
    (tmp_path / "control.key.pub").chmod(0o644)
    result = run_queue_cli("status", "--dir", str(tmp_path))
    assert result.returncode == 1 and "may be read by others (mode 644): chmod 600" in result.stderr
