"""Workers placed by SLURM: the job script, and a real single-node cluster running a scan, losing a job, queueing one.

The cluster (munged + slurmctld + slurmd, tests/support/slurm.py) starts once per session;
where SLURM is not installed these tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ns_bluesky.errors import ParameterError
from ns_bluesky.stream.client import ControlClient, IngestClient
from ns_bluesky.stream.config import PipelineConfig
from ns_bluesky.stream.protocol import Message
from ns_bluesky.stream.slurm import SlurmPool, job_script
from tests.support.pipeline import Results, write_config
from tests.support.processes import process_running
from tests.support.scan import SimScan

BIN = Path(sys.executable).parent
ECHO = '[[modules]]\nname = "echo"\nmodule = "echo"\nworkers = {workers}\nparams = {{ delay_s = {delay} }}\n'


def test_the_job_script_comes_from_the_configuration_and_holds_no_secret(tmp_path):
    from ns_bluesky.stream.security import generate

    keys = generate(tmp_path / "keys")
    cfg = PipelineConfig(curve_keys=str(keys), launcher="slurm", log_dir=str(tmp_path / "logs"),
                         slurm={"partition": "beam", "account": "cosmic", "cpus_per_worker": 4, "extra_args": ["--qos=high"]},
                         modules=[{"name": "echo", "module": "echo", "workers": 2, "params": {"delay_s": 0.5}}])
    text = job_script(cfg, "echo", "tcp://10.0.0.5:5562", tmp_path / "echo-%j.out")
    for line in ("#SBATCH --partition=beam", "#SBATCH --account=cosmic", "#SBATCH --cpus-per-task=4", "#SBATCH --qos=high",
                 "#SBATCH --job-name=ns-bluesky-echo", "#SBATCH --ntasks=1"):
        assert line in text.splitlines()
    worker = text.splitlines()[-1]
    assert worker.startswith("exec ") and "--address tcp://10.0.0.5:5562" in worker and f"--curve-keys {keys}" in worker
    assert """--params '{"delay_s": 0.5}'""" in worker and "--give-up-s 120" in worker
    secrets = [(keys / f"{n}.key_secret").read_text().split('secret-key = "')[1][:40] for n in ("client", "server")]
    assert not any(s in text for s in secrets)  # the keys stay in their files; the script names the directory
    with pytest.raises(ParameterError, match="one sbatch option"):
        job_script(cfg.model_copy(update={"slurm": cfg.slurm.model_copy(update={"extra_args": ["--qos=x\nrm -rf /"]})}), "echo", "tcp://h:1", tmp_path / "o")
    os.chmod(keys / "client.key_secret", 0o644)
    with pytest.raises(ParameterError, match="chmod 600"):
        SlurmPool(cfg, 5562)


def test_partition_without_the_slurm_launcher_is_refused(tmp_path):
    write_config(tmp_path / "p.toml", ECHO.format(workers=1, delay=0))
    out = _cli("pipeline", "start", "--config", str(tmp_path / "p.toml"), "--partition", "debug")
    assert out.returncode == 1 and "add --launcher slurm" in out.stderr


# ---------------------------------------------------------------- on a real cluster
def _cli(*args, env=None, timeout=120):
    return subprocess.run([shutil.which("ns-bluesky", path=str(BIN)), *args], capture_output=True, text=True, timeout=timeout, env=env)


class SlurmPipeline:
    """``ns-bluesky pipeline start --launcher slurm`` in a test: the CLI against the session's cluster; stopped after."""

    def __init__(self, cluster, tmp_path: Path, modules: str, **slurm):
        self.cluster, self.env = cluster, {**cluster.env, "NS_BLUESKY_STREAM_LOG_DIR": str(tmp_path / "logs")}
        extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in slurm.items())
        self.cfg = write_config(tmp_path / "p.toml", modules + ("[slurm]\n" + extra if extra else ""))
        self.conf = ["--config", str(tmp_path / "p.toml")]
        self.results, self.handler_pid = None, None

    def cli(self, *args, timeout=120):
        return _cli("pipeline", *args, *self.conf, env=self.env, timeout=timeout)

    def start(self, *args):
        out = self.cli("start", "--launcher", "slurm", "--partition", self.cluster.partition, *args)
        assert out.returncode == 0, out.stdout + out.stderr
        self.handler_pid = ControlClient(self.cfg).status()["pid"]
        self.results = Results(self.cfg)
        time.sleep(0.3)  # SUB joins before data flows
        return out

    def status(self) -> dict:
        return ControlClient(self.cfg).status()  # what 'pipeline status --json' prints, without a CLI start-up

    def jobs(self, state: str | None = None) -> list[dict]:
        return [j for j in self.status()["launcher"]["jobs"] if state is None or j["state"] == state]

    def stop(self) -> None:
        """``pipeline stop``, then until the handler has exited and SLURM lists none of its jobs."""
        if self.results is not None:
            self.results.close()
            self.results = None
        if self.handler_pid is None:
            return
        out = self.cli("stop")
        deadline = time.monotonic() + 15
        while process_running(self.handler_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_running(self.handler_pid):
            os.kill(self.handler_pid, signal.SIGKILL)
        self.handler_pid = None
        self.cluster.wait_idle()
        assert out.returncode == 0, out.stderr


@pytest.fixture
def slurm_pipeline(slurm_cluster, tmp_path):
    made = []

    def make(modules: str, **slurm) -> SlurmPipeline:
        made.append(SlurmPipeline(slurm_cluster, tmp_path, modules, **slurm))
        return made[-1]

    yield make
    for p in made:
        p.stop()
    assert slurm_cluster.squeue() == {}, "worker jobs left behind"


def _send_scan(client, scan: SimScan, seqs) -> None:
    for seq in seqs:
        client.send(scan.frame(seq))


def _process_scan(pipe, scan: SimScan, timeout_s: float) -> list:
    """Every frame of ``scan`` through the pipeline, start to stop; the messages of its results until it ended."""
    client = IngestClient(pipe.cfg)
    client.send(scan.start())
    _send_scan(client, scan, range(1, len(scan.sim.planned) + 1))
    client.send(Message("stop", run=scan.uid))
    client.flush(timeout_s)
    msgs = pipe.results.collect(lambda ms: pipe.results.ended(scan.uid), timeout_s=timeout_s)
    client.close()
    return msgs


def test_a_scan_processed_by_slurm_placed_workers_every_frame_once(slurm_pipeline, slurm_cluster):
    pipe = slurm_pipeline(ECHO.format(workers=2, delay=0))
    started = pipe.start()
    assert "pipeline ready" in started.stdout and "SLURM jobs" in started.stdout
    deadline = time.monotonic() + 10
    while len(pipe.jobs("RUNNING")) < 2 and time.monotonic() < deadline:  # squeue's view follows within a poll
        time.sleep(0.1)
    status = pipe.status()
    jobs = {j["job"] for j in status["launcher"]["jobs"] if j["state"] == "RUNNING"}
    workers = status["modules"]["echo"]["workers"]
    assert len(jobs) == 2 and {w["job"] for w in workers} == jobs  # each worker runs in a job of its own
    assert set(slurm_cluster.squeue()) == jobs
    scan = SimScan(shape=(4, 4))
    msgs = _process_scan(pipe, scan, 60)
    counts = Counter(m.seq for m in msgs if m.kind == "result" and m.run == scan.uid)
    assert sorted(counts) == list(range(1, 17)) and set(counts.values()) == {1}
    served = {w["job"]: w["processed"] for w in pipe.status()["modules"]["echo"]["workers"]}
    assert sum(served.values()) >= 16 and all(n > 0 for n in served.values()), served  # both jobs took frames
    pipe.stop()
    assert slurm_cluster.squeue() == {}  # stop cancelled (or ended) every worker job


def test_scancel_a_worker_job_mid_scan_its_frames_come_back_once(slurm_pipeline, slurm_cluster):
    pipe = slurm_pipeline(ECHO.format(workers=2, delay=0.1))
    pipe.start()
    scan = SimScan(shape=(8, 8))
    client = IngestClient(pipe.cfg)
    client.send(scan.start())
    _send_scan(client, scan, range(1, 33))
    deadline = time.monotonic() + 20
    victim = None
    while victim is None and time.monotonic() < deadline:  # a job whose worker holds frames right now
        busy = [w for w in ControlClient(pipe.cfg).status()["modules"]["echo"]["workers"] if w["in_flight"]]
        victim = busy[0]["job"] if busy else None
    assert victim, "no worker ever held frames"
    subprocess.run(["scancel", victim], env=slurm_cluster.env, check=True, timeout=10)
    _send_scan(client, scan, range(33, 65))
    client.send(Message("stop", run=scan.uid))
    client.flush(60)
    msgs = pipe.results.collect(lambda ms: pipe.results.ended(scan.uid), timeout_s=90)
    client.close()
    counts = Counter(m.seq for m in msgs if m.kind == "result" and m.run == scan.uid)
    assert sorted(counts) == list(range(1, 65)) and set(counts.values()) == {1}  # none lost, none twice
    status = pipe.status()
    assert status["modules"]["echo"]["redispatched"] >= 1
    jobs = {j["job"] for j in status["launcher"]["jobs"]}
    assert victim not in jobs and len(jobs) == 2  # the cancelled job was replaced by a new one


def test_a_job_that_cannot_start_is_reported_pending_never_a_hang(slurm_pipeline, slurm_cluster):
    # each worker asks for every CPU of the node: one job runs, the other waits for resources that never free up
    pipe = slurm_pipeline(ECHO.format(workers=2, delay=0), cpus_per_worker=slurm_cluster.cpus)
    t0 = time.monotonic()
    started = pipe.start("--timeout", "6")
    assert time.monotonic() - t0 < 20
    assert "1 worker job(s) still queued" in started.stdout and "Resources" in started.stdout
    pending = pipe.jobs("PENDING")
    assert len(pending) == 1 and pending[0]["reason"] == "Resources" and len(pipe.jobs("RUNNING")) == 1
    shown = pipe.cli("status")
    assert f"job {pending[0]['job']}" in shown.stdout and "PENDING (Resources)" in shown.stdout
    scan = SimScan(shape=(2, 2))
    msgs = _process_scan(pipe, scan, 30)
    assert sorted(m.seq for m in msgs if m.kind == "result" and m.run == scan.uid) == [1, 2, 3, 4]  # the running one serves
    scaled = pipe.cli("scale", "echo=1", "--timeout", "10")
    assert scaled.returncode == 0, scaled.stderr
    deadline = time.monotonic() + 10
    while pending[0]["job"] in slurm_cluster.squeue() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert slurm_cluster.squeue().get(pending[0]["job"]) in (None, "CANCELLED")  # scaling down cancels the queued job first
    assert len(pipe.jobs("RUNNING")) == 1


def _outward_address() -> str | None:
    """This machine's address on its first non-loopback interface (no packet is sent), or None."""
    import socket

    for target in ("10.255.255.254", "192.0.2.1", "198.51.100.1"):  # any routed address picks the outward interface
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect((target, 9))
            ip = s.getsockname()[0]
        except OSError:
            continue
        finally:
            s.close()
        if not ip.startswith("127."):
            return ip
    return None


def test_workers_reach_a_handler_on_a_network_address_only_with_curve(slurm_pipeline, tmp_path):
    import zmq

    from ns_bluesky.stream.protocol import decode
    from ns_bluesky.stream.security import generate, secure_client

    ip = _outward_address()
    if ip is None:
        pytest.skip("no non-loopback IPv4 interface to bind the handler to")
    keys = generate(tmp_path / "keys")
    pipe = slurm_pipeline(ECHO.format(workers=1, delay=0).replace("[[modules]]", f'host = "{ip}"\ncurve_keys = "{keys}"\n[[modules]]', 1))
    pipe.start()
    status = pipe.status()
    assert status["launcher"]["address"].startswith(f"tcp://{ip}:") and status["modules"]["echo"]["workers"][0]["job"]
    script = (tmp_path / "logs" / "slurm" / "echo.sbatch").read_text()
    assert f"--curve-keys {keys}" in script and "secret-key" not in script
    sub = zmq.Context.instance().socket(zmq.SUB)
    secure_client(sub, keys)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pipe.cfg.address(pipe.cfg.results_port, connect=True))
    time.sleep(0.3)
    scan = SimScan(shape=(2, 2))
    client = IngestClient(pipe.cfg)
    client.send(scan.start())
    _send_scan(client, scan, range(1, 5))
    client.send(Message("stop", run=scan.uid))
    client.flush(30)
    seqs, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline and not any(m.kind == "end_of_run" for m in seqs):
        if sub.poll(100):
            seqs.append(decode(sub.recv_multipart()[1:]))
    sub.close(linger=0)
    client.close()
    assert sorted(m.seq for m in seqs if m.kind == "result") == [1, 2, 3, 4]


def test_a_partition_slurm_refuses_and_a_worker_that_cannot_start_fail_in_one_line(slurm_pipeline, slurm_cluster, tmp_path):
    pipe = slurm_pipeline(ECHO.format(workers=1, delay=0))
    out = pipe.cli("start", "--launcher", "slurm", "--partition", "nope", "--timeout", "2")
    pipe.handler_pid = ControlClient(pipe.cfg).status()["pid"]
    assert out.returncode == 1 and "echo: sbatch failed" in out.stderr and "invalid partition" in out.stderr.lower(), out.stderr
    assert slurm_cluster.squeue() == {}
    pipe.stop()
    pipe = slurm_pipeline(ECHO.format(workers=1, delay=0), python=str(tmp_path / "no-python-here"))
    out = pipe.cli("start", "--launcher", "slurm", "--timeout", "6")
    pipe.handler_pid = ControlClient(pipe.cfg).status()["pid"]
    assert out.returncode == 1 and "ended FAILED within 10 s; see" in out.stderr, out.stderr
    time.sleep(2)
    submitted = (tmp_path / "logs" / "handler.log").read_text().count("submitted SLURM job")
    # about 9 s of jobs failing at once: 2, 4 s apart, not one per squeue poll (5 or more)
    assert 2 <= submitted <= 3, submitted



def test_a_killed_handler_leaves_no_jobs_behind(slurm_pipeline, slurm_cluster):
    pipe = slurm_pipeline(ECHO.format(workers=2, delay=0))
    pipe.start()
    jobs = {j["job"] for j in pipe.jobs("RUNNING")}
    os.kill(pipe.handler_pid, signal.SIGKILL)
    assert jobs <= set(slurm_cluster.squeue())  # the jobs outlive their handler...
    stop = pipe.cli("stop")
    assert stop.returncode == 0 and f"cancelled its SLURM jobs {', '.join(sorted(jobs))}" in stop.stdout, stop.stdout + stop.stderr
    slurm_cluster.wait_idle()
    assert not jobs & set(slurm_cluster.squeue())  # ...until 'pipeline stop' cancels them from the handler's jobs file
    pipe.handler_pid = None


def test_a_worker_whose_handler_is_gone_gives_up(tmp_path):
    from ns_bluesky.stream.config import free_loopback_ports

    (port,) = free_loopback_ports(1)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "ns_bluesky.stream.worker", "--module", "echo", "--address", f"tcp://127.0.0.1:{port}",
                          "--give-up-s", "1", "--log-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and time.monotonic() - t0 < 30
    assert "giving up" in (tmp_path / "echo.log").read_text()


def test_jobs_whose_workers_cannot_reach_the_handler_are_named(slurm_pipeline):
    pipe = slurm_pipeline(ECHO.format(workers=1, delay=0), handler_host="127.0.0.2")  # nothing listens there
    out = pipe.cli("start", "--launcher", "slurm", "--timeout", "5")
    pipe.handler_pid = ControlClient(pipe.cfg).status()["pid"]
    (job,) = pipe.jobs("RUNNING")
    assert out.returncode == 1 and f"SLURM jobs {job['job']} run but their workers did not connect to tcp://127.0.0.2:" in out.stderr, out.stderr
