"""Component contracts: ids, factories, the registry, and the lifecycle every component follows.

Lifecycle contract (the pipeline graph relies on it):
- a component is constructed by its factory from a validated config and does no I/O in __init__;
- ``start(host)`` acquires resources (ports, files, tasks) and returns once the component works;
  a failure raises and the daemon stops what it already started;
- ``shutdown()`` stops taking new work, drains what it accepted, and releases resources; it is safe
  to call twice and without ``start()``;
- the data plane is one async method, ``consume(...)``; after hand-off the caller no longer touches
  the data it passed.

The graph starts exporters first and receivers last, and shuts down in reverse, so nothing is ever
handed to a component that is not running.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from halod.model import CommitEvent, CommitResult, SpanBatch
    from halod.telemetry import Telemetry


class StartError(Exception):
    """A component could not start; the message names the component and what it could not do."""


RECANCEL_S = 2.0


async def stop_tasks(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel a component's background tasks and wait until they have ended (the part of
    ``shutdown()`` every task-running component shares); None entries are skipped. A task still
    running `RECANCEL_S` after its cancellation is cancelled again: a library can swallow one
    cancellation (3.11's asyncio.wait_for does when it races with completion, CPython gh-86296),
    and the wait would never end. (Long enough for a task's own cleanup, e.g. finishing a write.)"""
    pending = {task for task in tasks if task is not None}
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
        for task in done:  # retrieve what they raised: shutdown reports nothing of a cancelled loop
            if not task.cancelled():
                task.exception()


def listen_failed(who: str, endpoint: str, error: BaseException) -> StartError:
    """The error for a listener that could not bind (port in use, permission, bad address)."""
    errno = getattr(error, "errno", None)
    reason = os.strerror(errno) if errno else str(error).split(";")[0]
    return StartError(f"{who}: cannot listen on {endpoint}: {reason}")


class Kind(enum.StrEnum):
    RECEIVER = "receiver"
    PROCESSOR = "processor"
    EXPORTER = "exporter"
    EXTENSION = "extension"

    @property
    def section(self) -> str:
        """The YAML section that defines components of this kind (receivers, processors, ...)."""
        return f"{self.value}s"


_TYPE = re.compile(r"^[a-z][a-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True, slots=True)
class ComponentID:
    """``type`` or ``type/name``, as in the Collector: ``otlp``, ``otlp/edge``."""

    type: str
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> ComponentID:
        type_, sep, name = str(text).partition("/")
        if not _TYPE.match(type_):
            raise ValueError(f"invalid component id {text!r}: the type must match [a-z][a-z0-9_]*")
        if sep and not _NAME.match(name):
            raise ValueError(f"invalid component id {text!r}: the name after '/' must match [A-Za-z0-9_.-]+")
        return cls(type_, name)

    def __str__(self) -> str:
        return f"{self.type}/{self.name}" if self.name else self.type


class Consumer(Protocol):
    """The acknowledgement path: resolves once the batch is durably committed (or raises)."""

    async def consume(self, batch: SpanBatch) -> CommitResult: ...


class Host(Protocol):
    """What a running component may ask of the daemon."""

    telemetry: Telemetry

    def admission_check(self) -> None:
        """Raise `Refused` when the store cannot take more work right now (cheap; call before decoding)."""

    async def source_cursor(self, source: str) -> str | None:
        """Where a pulling source resumes: the `SpanBatch.cursor` last committed under `source`."""


class Component(Protocol):
    async def start(self, host: Host) -> None: ...

    async def shutdown(self) -> None: ...


class Receiver(Component, Protocol):
    """Turns external input into `SpanBatch`es handed to ``next_consumer``."""


class Processor(Component, Protocol):
    """Transforms a batch on the acknowledgement path, then hands it to the next consumer."""

    async def consume(self, batch: SpanBatch) -> CommitResult: ...


class Exporter(Component, Protocol):
    """Consumes committed spans, off the acknowledgement path (the store already has them)."""

    async def consume(self, event: CommitEvent) -> None: ...


ConfigT = TypeVar("ConfigT", bound=BaseModel)


@dataclass(frozen=True)
class CreateSettings:
    """Everything a factory gets besides its config."""

    id: ComponentID
    pipeline: str
    telemetry: Telemetry


@dataclass(frozen=True)
class Factory(Generic[ConfigT]):
    """Type name -> strict config model + constructor.

    Receivers' constructors take ``(settings, config, next_consumer)``, processors' take
    ``(settings, config, next_consumer)``, exporters' and extensions' ``(settings, config)``.
    """

    kind: Kind
    type: str
    config_model: builtins.type[ConfigT]
    create: Callable[..., Any]
    description: str = ""
    example: str = ""  # a YAML example for the component's README (docs are generated from the factory)

    def default_config(self) -> ConfigT:
        return self.config_model()


class Registry:
    """Every component type halod knows, by kind and type name."""

    def __init__(self) -> None:
        self._factories: dict[tuple[Kind, str], Factory[Any]] = {}

    def register(self, factory: Factory[Any]) -> None:
        key = (factory.kind, factory.type)
        if key in self._factories:
            raise ValueError(f"{factory.kind} type {factory.type!r} is registered twice")
        self._factories[key] = factory

    def get(self, kind: Kind, type_: str) -> Factory[Any] | None:
        return self._factories.get((kind, type_))

    def types(self, kind: Kind) -> list[str]:
        return sorted(type_ for k, type_ in self._factories if k is kind)

    def all(self) -> list[Factory[Any]]:
        return [self._factories[key] for key in sorted(self._factories)]


# Component packages, imported when the registry is first built. Each exposes ``FACTORY``; the
# module imports only its config and factory so heavy dependencies load when a pipeline uses them.
BUILTIN_COMPONENTS = (
    "halod.receivers.otlp",
    "halod.receivers.file",
    "halod.receivers.langfuse",
    "halod.receivers.phoenix",
    "halod.processors.redact",
    "halod.exporters.debug",
)

_default: Registry | None = None


def default_registry() -> Registry:
    global _default
    if _default is None:
        registry = Registry()
        for module in BUILTIN_COMPONENTS:
            registry.register(importlib.import_module(module).FACTORY)
        _default = registry
    return _default

