"""CURVE keys and loopback binding; the pipeline commands as a user types them."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ns_bluesky.errors import NSBlueskyError, ParameterError
from ns_bluesky.stream.client import ControlClient, PipelineUnavailable
from ns_bluesky.stream.config import PipelineConfig, load_config
from ns_bluesky.stream.handler import Handler
from ns_bluesky.stream.security import generate

BIN = Path(sys.executable).parent


def test_non_loopback_bind_without_keys_is_refused():
    with pytest.raises(ParameterError, match="refusing to bind 0.0.0.0 without CURVE keys"):
        Handler(PipelineConfig(host="0.0.0.0", control_port=0, ingest_port=0, worker_port=0, results_port=0), spawn=False)


def test_keyless_client_is_rejected_and_a_keyed_one_served(tmp_path):
    from tests.support.pipeline import write_config

    keys = generate(tmp_path / "keys")
    cfg = write_config(tmp_path / "p.toml", '[[modules]]\nname = "echo"\nmodule = "echo"\nworkers = 1\n', curve_keys=str(keys))
    proc = subprocess.Popen([sys.executable, "-m", "ns_bluesky.stream.handler", "--config", str(tmp_path / "p.toml")])
    try:
        ControlClient(cfg, timeout_s=5).wait_ready(60)  # the keyed client (and the keyed worker) get in
        keyless = cfg.model_copy(update={"curve_keys": None})
        with pytest.raises(PipelineUnavailable):
            ControlClient(keyless, timeout_s=2).status()
        other = generate(tmp_path / "other")  # right format, wrong key: not authorised
        with pytest.raises(PipelineUnavailable):
            ControlClient(cfg.model_copy(update={"curve_keys": str(other)}), timeout_s=2).status()
    finally:
        proc.terminate()
        proc.wait(10)


def test_wiring_and_params_are_checked_before_start(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[modules]]\nname = "e"\nmodule = "echo"\nparams = { delay_s = -1 }\n')
    with pytest.raises(Exception, match="module 'e' \\(echo\\): bad params"):
        load_config(bad)
    bad.write_text('[[modules]]\nname = "e"\nmodule = "nosuch"\n')
    with pytest.raises(Exception, match="module 'e': unknown stage type 'nosuch'; installed: .*echo"):
        load_config(bad)
    with pytest.raises(ParameterError, match="no module 'frame'"):
        load_config(None, {"frame": 3})


def _cli(*args, env=None, timeout=120):
    return subprocess.run([shutil.which("ns-bluesky", path=str(BIN)), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_pipeline_start_status_scale_stop_from_the_shell(tmp_path):
    from tests.support.pipeline import write_config

    write_config(tmp_path / "p.toml", '[[modules]]\nname = "echo"\nmodule = "echo"\nworkers = 1\n')
    env = {**os.environ, "NS_BLUESKY_STREAM_LOG_DIR": str(tmp_path / "logs")}
    conf = ["--config", str(tmp_path / "p.toml")]
    start = _cli("pipeline", "start", *conf, "--workers", "echo=2", env=env)
    assert start.returncode == 0, start.stderr
    assert "pipeline ready" in start.stdout
    try:
        status = json.loads(_cli("pipeline", "status", *conf, "--json", env=env).stdout)
        assert len(status["modules"]["echo"]["workers"]) == 2
        again = _cli("pipeline", "start", *conf, env=env)
        assert again.returncode == 1 and "already answers" in again.stderr
        assert _cli("pipeline", "scale", "echo=3", *conf, env=env).returncode == 0
        status = json.loads(_cli("pipeline", "status", *conf, "--json", env=env).stdout)
        assert len(status["modules"]["echo"]["workers"]) == 3
        logs = _cli("logs", "handler", env=env)
        assert logs.returncode == 0 and "ready with" in logs.stdout
        slurm = _cli("pipeline", "slurm-script", *conf, "--handler-host", "10.0.0.5", env=env)
        assert "srun" in slurm.stdout and "tcp://10.0.0.5:" in slurm.stdout
    finally:
        stop = _cli("pipeline", "stop", *conf, env=env)
    assert stop.returncode == 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _cli("pipeline", "status", *conf, env=env).returncode == 0:
        time.sleep(0.3)
    gone = _cli("pipeline", "status", *conf, env=env)
    assert gone.returncode == 1 and "no pipeline answered" in gone.stderr


def test_stream_sim_feeds_a_running_pipeline_and_fails_clearly_without_one(make_pipeline, tmp_path):
    pipe = make_pipeline()
    conf = str(tmp_path / "pipeline.toml")
    out = _cli("stream-sim", "--frames", "12", "--rate", "0", "--distinct", "3", "--run", "sim-1", "--config", conf)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("sent 12 frames of run sim-1")
    msgs = pipe.results.collect(lambda ms: pipe.results.ended("sim-1"), timeout_s=60)
    results = [m for m in msgs if m.kind == "result" and m.run == "sim-1"]
    assert sorted(m.seq for m in results) == list(range(1, 13))
    assert results[0].arrays["raw"].shape == (1040, 1152)
    pipe.stop()
    gone = _cli("stream-sim", "--frames", "200", "--rate", "0", "--distinct", "1", "--timeout", "2", "--config", conf)
    assert gone.returncode == 1 and "unacknowledged" in gone.stderr and len(gone.stderr.strip().splitlines()) == 1


def test_a_wiring_whose_types_do_not_match_fails_naming_both_ends(tmp_path):
    conf = tmp_path / "wiring.yaml"
    conf.write_text("modules:\n  - {name: echo, module: echo}\n  - {name: viewer, module: 'tests.support.stages:NeedsStxm'}\n")
    with pytest.raises(Exception, match="module 'viewer' \\(tests.support.stages:NeedsStxm\\) consumes 'stxm', which nothing produces .*echo from echo"):
        load_config(conf)


def test_a_cycle_or_a_stage_with_two_producers_is_refused_at_start(tmp_path):
    conf = tmp_path / "chain.toml"
    conf.write_text('[[modules]]\nname = "echo"\nmodule = "echo"\n[[modules]]\nname = "self-fed"\nmodule = "tests.support.stages:Loop"\n')
    with pytest.raises(Exception, match="modules feed each other in a cycle: self-fed"):
        load_config(conf)
    conf.write_text('[[modules]]\nname = "a"\nmodule = "echo"\n[[modules]]\nname = "b"\nmodule = "echo"\n')
    with pytest.raises(Exception, match="module 'b' \\(echo\\) produces 'echo', which 'a' already produces"):
        load_config(conf)


def test_stages_order_modules_by_what_feeds_them(tmp_path):
    conf = tmp_path / "chain.toml"
    conf.write_text('[[modules]]\nname = "count"\nmodule = "tally"\n[[modules]]\nname = "echo"\nmodule = "echo"\n')
    assert load_config(conf).levels() == [["echo"], ["count"]]


def test_scale_refuses_bad_counts_without_applying_any(make_pipeline):
    pipe = make_pipeline()
    with pytest.raises(NSBlueskyError, match="must be 0..256"):
        pipe.control("scale", counts={"echo": -1})
    with pytest.raises(NSBlueskyError, match="no module 'nope'"):
        pipe.control("scale", counts={"echo": 5, "nope": 1})
    assert pipe.control.status()["modules"]["echo"]["wanted_workers"] == 2


def test_no_local_workers_waits_for_workers_from_elsewhere(tmp_path):
    from tests.support.pipeline import write_config

    cfg = write_config(tmp_path / "p.toml", '[[modules]]\nname = "echo"\nmodule = "echo"\nworkers = 1\n')
    env = {**os.environ, "NS_BLUESKY_STREAM_LOG_DIR": str(tmp_path / "logs")}
    conf = ["--config", str(tmp_path / "p.toml")]
    assert _cli("pipeline", "start", *conf, "--no-local-workers", env=env).returncode == 0
    remote = None
    try:
        assert json.loads(_cli("pipeline", "status", *conf, "--json", env=env).stdout)["modules"]["echo"]["workers"] == []
        remote = subprocess.Popen([sys.executable, "-m", "ns_bluesky.stream.worker", "--module", "echo",
                                   "--address", cfg.address(cfg.worker_port, connect=True), "--log-dir", str(tmp_path / "logs")])
        status = ControlClient(cfg, timeout_s=5).wait_ready(60)
        assert [w["pid"] for w in status["modules"]["echo"]["workers"]] == [remote.pid]
    finally:
        _cli("pipeline", "stop", *conf, env=env)
        if remote is not None:
            remote.wait(10)
