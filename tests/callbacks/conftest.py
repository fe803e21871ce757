"""The pipeline fixtures of the stream tests, shared with the bridge tests."""

from tests.stream.conftest import make_pipeline  # noqa: F401
