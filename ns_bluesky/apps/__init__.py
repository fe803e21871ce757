"""The applications: the ``ns-bluesky`` and ``nsraw2cxi`` commands, the demo, replay, offline
reconstruction and the pipeline session. The one layer that may import every other; nothing
imports it."""
