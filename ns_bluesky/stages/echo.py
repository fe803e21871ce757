"""Echo: returns each frame unchanged. Proves the transport; its knobs make test faults."""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..stream.protocol import Message
from ..stream.stage import Stage


class EchoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delay_s: float = Field(0.0, ge=0, description="pretend work: sleep this long per frame")
    fail_every: int = Field(0, ge=0, description="raise on every n-th frame (0: never), to test error reporting")
    unsendable_every: int = Field(0, ge=0, description="return a float16 result (refused by the wire) every n-th frame")


class EchoStage(Stage):
    name = "echo"
    description = "returns each frame as a result of stage 'echo' (transport tests and benchmarks)"
    inputs = ("frame",)
    outputs = ("echo",)
    Params = EchoParams

    def process(self, msg: Message) -> Message:
        deadline = time.monotonic() + self.params.delay_s
        while time.monotonic() < deadline and not self.should_stop(msg.run):  # pretend work, abortable
            time.sleep(min(0.01, max(deadline - time.monotonic(), 0)))
        if self.params.fail_every and msg.seq % self.params.fail_every == 0:
            raise RuntimeError(f"echo: injected failure on seq {msg.seq}")
        meta = {"source": "echo", "scalars": {"seq": msg.seq}, **{k: msg.meta[k] for k in ("t_sent",) if k in msg.meta}}
        if self.params.unsendable_every and msg.seq % self.params.unsendable_every == 0:
            return Message("result", run=msg.run, seq=msg.seq, stage="echo", arrays={"x": np.zeros(2, np.float16)})
        return Message("result", run=msg.run, seq=msg.seq, stage="echo", meta=meta, arrays=dict(msg.arrays))
