"""Processing modules: what a worker computes, declared so the pipeline can be checked before it runs.

A module says which message kinds it consumes and produces and which parameters it
takes (a pydantic model, hence a JSON schema for ``ns-bluesky modules --json``). It
never touches a socket: the worker base class owns the event loop, heartbeats and
control commands and calls :meth:`Module.process` once per item.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from .protocol import Message


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Module:
    """Base class: subclasses set the class attributes and implement :meth:`process`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: ingest kinds ("frame", "event") or result stages of other modules
    inputs: ClassVar[tuple[str, ...]] = ("frame",)
    #: the stages of the results it returns; other modules may consume them
    outputs: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[BaseModel]] = NoParams
    #: input arrays may live in a shared-memory slot that is rewritten after ``process``
    #: returns; a module that keeps them (a reconstruction gathering frames) says so
    #: here and gets private copies
    keeps_inputs: ClassVar[bool] = False
    #: run purposes (the start document's ``purpose``, e.g. "dark", "ptychography") whose items it
    #: takes; empty: every run. Start and stop still reach it, so it may ignore a run it does not take.
    purposes: ClassVar[tuple[str, ...]] = ()
    #: result stages that are state rather than items (a dark's statistics): each such result goes to
    #: every worker of the modules that consume it, and to workers that register later
    shared_outputs: ClassVar[tuple[str, ...]] = ()
    #: ``{stage: start key}``: a run's items wait until the shared result of ``stage`` for the run
    #: the start document names under ``key`` was handed out (or the pipeline's ``wait_timeout_s``
    #: passed; the module then works without it and says so)
    waits_for: ClassVar[dict[str, str]] = {}

    @classmethod
    def inputs_for(cls, params: BaseModel) -> tuple[str, ...]:
        """The inputs this configuration consumes (a writer with a stage switched off takes less)."""
        return cls.inputs

    def __init__(self, params: BaseModel | None = None):
        self.params = params if params is not None else self.Params()
        self.aborted_runs: set[str] = set()  # the worker shares its set: filled the moment an abort arrives
        self._emit = None  # set by the worker while it runs process/end_run

    def emit(self, msg: Message) -> None:
        """Send a result now, before ``process``/``end_run`` returns (a first final image while refining)."""
        if self._emit is None:
            raise RuntimeError(f"{self.name}: emit() outside process/end_run")
        self._emit(msg)

    def should_stop(self, run: str) -> bool:
        """True once ``run`` is aborted: a long computation checks it between iterations and returns early."""
        return run in self.aborted_runs

    def process(self, msg: Message) -> Message | list[Message] | None:
        """Turn one input message into zero or more results (``stage`` names what they are)."""
        raise NotImplementedError

    def end_run(self, run: str) -> Message | list[Message] | None:
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


_REGISTRY: dict[str, type[Module]] = {}


def register(cls: type[Module]) -> type[Module]:
    """Class decorator: make a module available by its ``name`` to configs and the CLI."""
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Module]]:
    from .. import modules  # noqa: F401  (importing registers the built-in modules)

    return dict(_REGISTRY)


def get_module(name: str) -> type[Module]:
    mods = registry()
    if name not in mods:
        raise KeyError(f"unknown module {name!r}; known: {', '.join(sorted(mods))}")
    return mods[name]
