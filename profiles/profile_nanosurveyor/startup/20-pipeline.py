"""Pipeline: every scan streams into the processing pipeline, its results become derived runs in ``processed``.

``$NS_BLUESKY_PIPELINE`` names the configuration of a pipeline that already runs
(``ns-bluesky pipeline start --config F``); without it a private one is started on free
loopback ports and stopped when the session ends.
"""

import os

from ns_bluesky.callbacks.bridge import PipelineBridge

from ns_bluesky.apps.session import PipelineSession
from ns_bluesky.io.catalog import at_exit
from ns_bluesky.stages.pipeline import ptycho_pipeline
from ns_bluesky.stream.config import load_config

_shared = os.environ.get("NS_BLUESKY_PIPELINE")
pipeline_cfg = load_config(_shared) if _shared else ptycho_pipeline(out_dir="cxi-output", refine_s=30.0)
pipeline = PipelineSession(cat, CATALOG_DIR, pipeline_cfg, CATALOG_DIR.parent / "pipeline", own_pipeline=not _shared)  # noqa: F821
pipeline.__enter__()
at_exit(pipeline.__exit__)  # while the catalog still answers: open derived runs get their stop
bridge = PipelineBridge(pipeline_cfg)
RE.subscribe(bridge)  # noqa: F821
at_exit(bridge.close)
print(f"[20-pipeline] pipeline ({'shared: ' + _shared if _shared else 'private, local workers'}); "
      "results recorded as derived runs: pipeline.finish(uid) waits for one")
