"""The live reconstruction with ``ranks: 2``: its whole-scan refinement runs as an MPI job (real mpiexec)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="the mpi extra (mpi4py + the mpich wheel) is not installed")

from ns_bluesky.ptycho.metrics import nrmse  # noqa: E402
from ns_bluesky.stages.pipeline import ptycho_pipeline  # noqa: E402
from ns_bluesky.stages.recon_mpi import refine_over_mpi  # noqa: E402
from ns_bluesky.stream.config import PipelineConfig  # noqa: E402
from ns_bluesky.stream.mpi import MPIJobError  # noqa: E402
from ns_bluesky.stream.protocol import Message  # noqa: E402
from tests.support.ptycho_set import small_set  # noqa: E402


def test_the_refinement_over_two_ranks_solves_the_scan():
    data, obj, probe, mask = small_set()
    result = refine_over_mpi(2, data.patterns, data.origins_px, data.weights, probe, (76, 76), engine_name="lsqml",
                             backend="numpy", seconds=3.0, max_iterations=30, start_iteration=5)
    assert result["object"].shape == (76, 76) and result["iteration"] == 35  # counts on from the live iterations
    assert result["residuals"][-1] < result["residuals"][0] / 10
    h, w = obj.shape
    assert nrmse(np.pad(result["object"], ((0, h - 76), (0, w - 76)), constant_values=1), obj, mask) < 0.15  # measured 0.12


def test_a_failed_job_is_one_clear_error():
    data, _, probe, _ = small_set()
    with pytest.raises(MPIJobError, match="failed with exit status"):  # 2 frames cannot feed 3 ranks
        refine_over_mpi(3, data.patterns[:2], data.origins_px[:2], data.weights[:2], probe, (76, 76), engine_name="lsqml",
                        backend="numpy", seconds=1.0, max_iterations=5)


def test_ranks_is_a_recon_parameter_of_the_pipeline():
    cfg = ptycho_pipeline(ranks=2, free_ports=False)
    assert next(m for m in cfg.modules if m.name == "recon").params["ranks"] == 2
    with pytest.raises(ValueError, match="ranks"):
        PipelineConfig(modules=[{"name": "recon", "module": "recon", "params": {"ranks": 0}}])


RECON_2_RANKS = """
[[modules]]
name = "dark"
module = "dark"
[[modules]]
name = "frame"
module = "frame"
[[modules]]
name = "recon"
module = "recon"
credits = 8
# the refinement ends after 20 x final_iterations = 20 iterations (or 30 s): as many on a busy machine
params = { min_frames = 4, final_seconds = 1.0, final_iterations = 1, publish_every_s = 0.2, refine_seconds = 30.0, ranks = 2 }
"""


@pytest.mark.slow
def test_a_scan_through_the_pipeline_is_refined_over_two_ranks(make_pipeline, sim_scan):
    pipe = make_pipeline(RECON_2_RANKS)
    client = pipe.ingest()
    client.send(sim_scan.start(dark=True))
    for seq in range(1, 5):
        client.send(sim_scan.dark_frame(seq))
    client.send(Message("stop", run=sim_scan.dark_uid))
    client.send(sim_scan.start())
    n = len(sim_scan.sim.planned)
    for seq in range(1, n + 1):
        client.send(sim_scan.frame(seq))
    client.send(Message("stop", run=sim_scan.uid, meta={"num_frames": n}))
    pipe.results.collect(lambda ms: pipe.results.ended(sim_scan.uid), timeout_s=120)
    recon = [m for m in pipe.results.messages if m.stage == "recon" and m.run == sim_scan.uid]
    final, refined = recon[-2].meta["scalars"], recon[-1].meta["scalars"]
    assert (final["final"], final["refined"], refined["final"], refined["refined"]) == (1, 0, 1, 1)
    assert refined["frames"] == n and refined["iteration"] > final["iteration"]
    # the first live update may come before its first iteration has a residual (null: NaN in JSON)
    first = next(m.meta["scalars"]["residual"] for m in recon if m.meta["scalars"].get("residual") is not None)
    assert refined["residual"] < first
    assert recon[-1].arrays["object_phase"].shape == recon[-2].arrays["object_phase"].shape
