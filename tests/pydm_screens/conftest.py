from tests.stream.conftest import make_pipeline  # noqa: F401
