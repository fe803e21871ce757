"""The science stages, each a short :class:`~ns_bluesky.stream.stage.Stage` subclass.

Found by the pipeline through the ``ns_bluesky.stages`` entry points in pyproject.toml,
never by importing this package: a pipeline configuration names a stage type, the
worker process that serves it loads only that stage's numerics.
"""
