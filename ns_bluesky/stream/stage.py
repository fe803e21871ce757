"""The stage contract: what a worker computes, declared so the pipeline can be checked before it runs.

A stage says which message kinds it consumes and produces and which parameters it takes
(a pydantic model, hence a JSON schema for ``ns-bluesky modules --json``). It never
touches a socket: the worker owns the event loop, heartbeats and control commands, calls
:meth:`Stage.start_run`, :meth:`Stage.process` and :meth:`Stage.end_run`, and hands the
stage, at construction, the one way to send a result early (``emit``) and the set of
aborted runs it may poll (:meth:`Stage.should_stop`).

Stages are found by name through the ``ns_bluesky.stages`` entry-point group (this
package's own, and any a facility's package declares), or by a dotted path
``package.module:Class`` in the pipeline configuration, so a facility adds a stage in
its own package without editing this one.
"""

from __future__ import annotations

import functools
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from importlib.metadata import entry_points
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from .protocol import Message

#: the entry-point group stages are registered under (``[project.entry-points."ns_bluesky.stages"]``)
ENTRY_POINT_GROUP = "ns_bluesky.stages"

Results = Message | list[Message] | None
Emit = Callable[[Message], None]


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stage(ABC):
    """Base class: subclasses set the class attributes and implement :meth:`process`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: ingest kinds ("frame", "event") or result stages of other stages
    inputs: ClassVar[tuple[str, ...]] = ("frame",)
    #: the stages of the results it returns; other stages may consume them
    outputs: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[BaseModel]] = NoParams
    #: input arrays may live in a shared-memory slot that is rewritten after ``process``
    #: returns; a stage that keeps them (a reconstruction gathering frames) says so
    #: here and gets private copies
    keeps_inputs: ClassVar[bool] = False
    #: run purposes (the start document's ``purpose``, e.g. "dark", "ptychography") whose items it
    #: takes; empty: every run. Start and stop still reach it, so it may ignore a run it does not take.
    purposes: ClassVar[tuple[str, ...]] = ()
    #: result stages that are state rather than items (a dark's statistics): each such result goes to
    #: every worker of the stages that consume it, and to workers that register later
    shared_outputs: ClassVar[tuple[str, ...]] = ()
    #: ``{stage: start key}``: a run's items wait until the shared result of ``stage`` for the run
    #: the start document names under ``key`` was handed out (or the pipeline's ``wait_timeout_s``
    #: passed; the stage then works without it and says so)
    waits_for: ClassVar[dict[str, str]] = {}

    @classmethod
    def inputs_for(cls, params: BaseModel) -> tuple[str, ...]:
        """The inputs this configuration consumes (a writer with a stage switched off takes less)."""
        return cls.inputs

    def __init__(self, params: BaseModel | None = None, *, emit: Emit | None = None, aborted: Collection[str] = frozenset()):
        self.params = params if params is not None else self.Params()
        self._emit = emit
        self._aborted = aborted  # the worker's live set: filled the moment an abort arrives

    def emit(self, msg: Message) -> None:
        """Send a result now, before ``process``/``end_run`` returns (a first final image while refining)."""
        if self._emit is None:
            raise RuntimeError(f"{self.name}: emit() needs the worker's emitter, given at construction")
        self._emit(msg)

    def should_stop(self, run: str) -> bool:
        """True once ``run`` is aborted: a long computation checks it between iterations and returns early."""
        return run in self._aborted

    def start_run(self, msg: Message) -> Results:
        """A run starts (``msg`` is its start message): set up per-run state."""
        return None

    @abstractmethod
    def process(self, msg: Message) -> Results:
        """Turn one input message into zero or more results (``stage`` names what they are)."""

    def end_run(self, run: str) -> Results:
        """The run ended and every one of its items was processed: flush what is left."""
        return None

    def abort_run(self, run: str) -> None:
        """Forget the run's state: it was aborted."""

    @classmethod
    def describe(cls) -> dict:
        return {
            "name": cls.name,
            "description": cls.description,
            "inputs": list(cls.inputs),
            "outputs": list(cls.outputs),
            "shared_outputs": list(cls.shared_outputs),
            "purposes": list(cls.purposes),
            "params": cls.Params.model_json_schema(),
        }


def stage_names() -> list[str]:
    """The stage types installed under the entry-point group, sorted."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


@functools.lru_cache(maxsize=256)
def load_stage(ref: str) -> type[Stage]:
    """The stage class a configuration names: an entry-point name, or ``package.module:Class``."""
    if ":" in ref:
        module_name, _, attr = ref.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise KeyError(f"stage {ref!r} cannot be loaded: {exc}") from None
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == ref]
        if not found:
            raise KeyError(f"unknown stage type {ref!r}; installed: {', '.join(stage_names()) or 'none'} "
                           "(or give package.module:Class)")
        cls = found[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise KeyError(f"stage {ref!r} is {cls!r}, not a Stage subclass")
    return cls
