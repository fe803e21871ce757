"""The handler's parts, each holding one kind of state, composed by :mod:`ns_bluesky.stream.handler`.

As the zguide's Majordomo broker keeps services, workers and the broker apart, the
handler (sockets and the poll loop) delegates to: :mod:`.scheduler` (module queues,
worker records, credits, liveness), :mod:`.runbook` (runs, the shared-state barrier,
the end of a run stage by stage, abort), :mod:`.shared` (shared results for every
worker), :mod:`.slots` (shared-memory slots of local workers), :mod:`.spill` (backlog
on disk), :mod:`.ingest` (decode, acknowledge, refuse) and :mod:`.control` (commands
and status). None of them touches a socket: each is given what it sends through.
"""
