"""Pipeline configuration: which modules, how many workers, which ports; checked before data flows.

A TOML or YAML file, validated by pydantic. The wiring check runs at start: every
module's inputs must be produced by the ingest stream (``frame``, ``event``) or be
the result stage of another module, no stage has two producers, modules form no
cycle, and a module's parameters must fit its declared model; errors name both ends.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ParameterError
from .stage import load_stage

#: what the ingest port (the bridge from Bluesky, or ``stream-sim``) produces
INGEST_KINDS = ("start", "frame", "event", "stop")

DEFAULT_PORTS = {"control": 5560, "ingest": 5561, "workers": 5562, "results": 5563}


class ModuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the stage name this module's workers serve")
    module: str = Field(description="stage type: an installed stage's name (e.g. 'echo') or package.module:Class")
    workers: int = Field(1, ge=0, le=256)
    credits: int = Field(2, ge=1, le=64, description="items a worker may hold at once")
    nice: int = Field(0, ge=0, le=19, description="lower the local workers' CPU priority (a reconstruction takes what the frames leave)")
    idle: bool = Field(False, description="run the local workers only on CPU time nothing else wants (Linux SCHED_IDLE; elsewhere nice 19)")
    params: dict[str, Any] = Field(default_factory=dict)


class SlurmSettings(BaseModel):
    """How a facility's SLURM places the workers (``launcher = "slurm"``): the job's sbatch options, where the
    workers find the handler and Python, and how patiently the handler's launcher deals with SLURM."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = Field(None, description="sbatch --partition (default: the cluster's default partition)")
    account: str | None = Field(None, description="sbatch --account")
    time_limit: str = Field("12:00:00", description="sbatch --time: a worker job ends after this even if nobody cancels it")
    cpus_per_worker: int = Field(1, ge=1, le=1024, description="sbatch --cpus-per-task of each worker job")
    mem_per_worker: str | None = Field(None, description="sbatch --mem, e.g. '8G'")
    gpus_per_worker: int = Field(0, ge=0, le=16, description="sbatch --gpus (0: none asked)")
    handler_host: str | None = Field(
        None, description="the handler's address as the nodes see it (default: host, or this machine's name when host is 0.0.0.0)"
    )
    python: str | None = Field(None, description="the Python with ns_bluesky installed on the nodes (default: this one)")
    extra_args: list[str] = Field(default_factory=list, description="more #SBATCH options, e.g. ['--qos=beamline', '--constraint=gpu']")
    poll_s: float = Field(1.0, gt=0, le=60, description="how often squeue is asked for the jobs' states")
    command_timeout_s: float = Field(20.0, gt=0, le=300, description="sbatch, squeue or scancel taking longer is an error, not a hang")
    give_up_s: float = Field(120.0, gt=0, description="a worker job whose handler has been silent this long ends (a crashed handler leaves no jobs behind)")
    drain_timeout_s: float = Field(30.0, gt=0, description="a scaled-down job still running this long after its worker was let go is cancelled")


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    nice: int = Field(0, ge=0, le=19, description="lower the CPU priority of the handler and of the local workers it "
                      "starts (they inherit it, below their own 'nice'): processing that may lag behind an acquisition "
                      "sharing the host")
    control_port: int = Field(DEFAULT_PORTS["control"], ge=0, le=65535)
    ingest_port: int = Field(DEFAULT_PORTS["ingest"], ge=0, le=65535)
    worker_port: int = Field(DEFAULT_PORTS["workers"], ge=0, le=65535)
    results_port: int = Field(DEFAULT_PORTS["results"], ge=0, le=65535)
    heartbeat_s: float = Field(0.25, gt=0, le=10)
    liveness: int = Field(8, ge=2, description="missed heartbeats before a worker is declared dead")
    backlog_items: int = Field(2000, ge=1, description="items held in memory per module before spilling to disk")
    spill_dir: str | None = None
    shm_slot_mb: float = Field(
        4.0, ge=0, le=1024, description="shared-memory slot per item for local workers (0: everything over TCP)"
    )
    wait_timeout_s: float = Field(
        30.0, gt=0, description="how long a run's items wait for the shared state they need (its dark) before going on without"
    )
    log_dir: str | None = None
    curve_keys: str | None = Field(
        None, description="directory from 'ns-bluesky keys generate': TCP with CURVE on host (remote and SLURM workers). "
        "Without it the sockets are ipc:// files in socket_dir, open to this user only"
    )
    socket_dir: str | None = Field(None, description="the 0700 directory of a keyless pipeline's sockets (default /tmp/ns-bluesky-<uid>)")
    max_array_mb: float = Field(
        64.0, gt=0, le=1024,
        description="the largest part of a message any socket takes (one array: an FCCD frame is 2.4 MB, a dark's statistics "
        "three 4.8 MB arrays); libzmq drops a peer that sends more before buffering it",
    )
    max_open_runs: int = Field(64, ge=1, le=100_000, description="runs under way at once; data for one more is refused (nack too-many-runs)")
    run_start_timeout_s: float = Field(60.0, gt=0, description="a run whose start has not come this long after its first data expires")
    run_idle_timeout_s: float = Field(
        6 * 3600.0, gt=0, description="a started run silent this long without its stop expires (a paused scan counts as silent)"
    )
    launcher: Literal["local", "slurm"] = Field("local", description="where the handler starts the workers: processes here, or SLURM jobs")
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    modules: list[ModuleSpec] = Field(default_factory=lambda: [ModuleSpec(name="echo", module="echo", workers=2)])

    @model_validator(mode="after")
    def _check_wiring(self) -> PipelineConfig:
        names = [m.name for m in self.modules]
        if len(set(names)) != len(names):
            raise ValueError(f"module names must be unique, got {names}")
        produced = {kind: "ingest" for kind in INGEST_KINDS}
        known = {}
        for spec in self.modules:
            try:
                known[spec.module] = load_stage(spec.module)
            except KeyError as exc:
                raise ValueError(f"module {spec.name!r}: {exc.args[0]}") from None
            for stage in known[spec.module].outputs:
                if stage in produced:
                    raise ValueError(f"module {spec.name!r} ({spec.module}) produces {stage!r}, which {produced[stage]!r} already produces")
                produced[stage] = spec.name
        for spec in self.modules:
            cls = known[spec.module]
            try:
                params = cls.Params(**spec.params)
            except Exception as exc:
                raise ValueError(f"module {spec.name!r} ({spec.module}): bad params: {exc}") from None
            for kind in cls.inputs_for(params):
                if kind not in produced:
                    raise ValueError(
                        f"module {spec.name!r} ({spec.module}) consumes {kind!r}, which nothing produces "
                        f"(producers: {', '.join(f'{k} from {v}' for k, v in sorted(produced.items()))})"
                    )
        self.levels()  # a cycle fails here, at start
        return self

    def levels(self) -> list[list[str]]:
        """Module names in stages: the first fed by ingest only, each later one by those before it.

        A run's end travels stage by stage, so what a module flushes at the end of a run
        still reaches the modules it feeds. A cycle is refused, naming its modules.
        """
        producer = {stage: spec.name for spec in self.modules for stage in load_stage(spec.module).outputs}
        feeds = {spec.name: {producer[k] for k in self.inputs_of(spec) if k in producer} for spec in self.modules}
        level: dict[str, int] = {}
        while len(level) < len(feeds):
            ready = [m for m, ups in feeds.items() if m not in level and all(u in level for u in ups)]
            if not ready:
                raise ValueError(f"modules feed each other in a cycle: {', '.join(sorted(set(feeds) - set(level)))}")
            for m in ready:
                level[m] = 1 + max((level[u] for u in feeds[m]), default=-1)
        return [[m for m in feeds if level[m] == n] for n in range(max(level.values(), default=-1) + 1)]

    def inputs_of(self, spec: ModuleSpec) -> tuple[str, ...]:
        """What the module of ``spec`` consumes with its parameters."""
        cls = load_stage(spec.module)
        return cls.inputs_for(cls.Params(**spec.params))

    def address(self, port: int, *, connect: bool = False) -> str:
        """The endpoint of ``port``: an ipc:// file in the private socket directory, or TCP with CURVE keys."""
        from .security import endpoint

        return endpoint(self, port, connect=connect)

    @property
    def max_array_bytes(self) -> int:
        return int(self.max_array_mb * 2**20)


def load_config(path: str | os.PathLike | None = None, workers: dict[str, int] | None = None) -> PipelineConfig:
    """Read a TOML/YAML/JSON pipeline file (or the defaults) and apply ``--workers name=N`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ParameterError(f"pipeline config not found: {p}")
        try:
            text = p.read_text()
            if p.suffix == ".json":  # what programs write (the demo's pipeline)
                import json

                data = json.loads(text)
            elif p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = tomllib.loads(text)
        except Exception as exc:
            raise ParameterError(f"cannot parse {p}: {exc}") from None
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: a pipeline file holds a table of settings, got {type(data).__name__}")
    try:
        cfg = PipelineConfig(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "settings"
        raise ParameterError(f"{path or 'pipeline defaults'}: {where}: {first.get('msg')}") from None
    for name, n in (workers or {}).items():
        spec = next((m for m in cfg.modules if m.name == name), None)
        if spec is None:
            raise ParameterError(f"--workers {name}={n}: no module {name!r} in the pipeline ({', '.join(m.name for m in cfg.modules)})")
        spec.workers = n
    return cfg


def apply_launcher_args(cfg: PipelineConfig, launcher: str | None, partition: str | None, account: str | None) -> PipelineConfig:
    """``--launcher/--partition/--account`` over the file's values (a partition or account for local workers is refused)."""
    if launcher:
        cfg.launcher = launcher
    if partition:
        cfg.slurm.partition = partition
    if account:
        cfg.slurm.account = account
    if (partition or account) and cfg.launcher != "slurm":
        raise ParameterError("--partition and --account are for SLURM workers: add --launcher slurm")
    return cfg


def free_loopback_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (for tests, benchmarks and side-by-side pipelines)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def parse_counts(items: list[str] | None) -> dict[str, int]:
    """``["frame=4", "recon=1"]`` to ``{"frame": 4, "recon": 1}``."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise ParameterError(f"expected NAME=COUNT such as frame=4, got {item!r}")
        out[name] = int(value)
    return out
