"""Stages that exist only to test the wiring checks: a configuration names them as ``tests.support.stages:Class``."""

from __future__ import annotations

from ns_bluesky.stream.stage import Stage


class NeedsStxm(Stage):
    name = "needs-stxm"
    inputs = ("stxm",)
    outputs = ("result",)

    def process(self, msg):
        return None


class Loop(Stage):
    name = "loop"
    inputs = ("loop",)
    outputs = ("loop",)

    def process(self, msg):
        return None


class NotAStage:
    name = "not-a-stage"
