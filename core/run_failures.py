"""What goes wrong inside a run, said as one message: a plugin objective that raised, a full disk.

A plugin objective's code runs deep inside the data stream and the backend's step (under autodiff or
a JIT trace), where a raw traceback never names the plugin. The run does not wrap every call site;
it reads the traceback once, at the run's boundary: the outermost frame whose ``self`` is one of the
run's objective instances is the call the framework made into the plugin (``make_example``,
``loss``, ``prepare``, ...).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Mapping
from types import TracebackType

from plmforge.core.errors import ObjectiveFailed


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from (JAX, for one, re-raises with the original as cause)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _frames(traceback: TracebackType | None) -> Iterator[TracebackType]:
    while traceback is not None:
        yield traceback
        traceback = traceback.tb_next


def failing_call(error: BaseException, objectives: Mapping[int, str]) -> tuple[str, str, BaseException] | None:
    """(description of the objective, name of the method called, the exception raised there), or None.

    ``objectives`` maps ``id(objective instance)`` to how a message names it.
    """
    for raised in _chain(error):
        for frame in _frames(raised.__traceback__):
            owner = frame.tb_frame.f_locals.get("self")
            if owner is not None and id(owner) in objectives:
                return objectives[id(owner)], frame.tb_frame.f_code.co_name, raised
    return None


def objective_failure(error: BaseException, objectives: Mapping[int, str]) -> ObjectiveFailed | None:
    """The one message for an exception raised inside a plugin objective; None when no objective raised it.

    The caller raises it ``from error``, so ``--debug`` shows the plugin's own traceback.
    """
    found = failing_call(error, objectives)
    if found is None:
        return None
    described, call, raised = found
    text = str(raised)
    return ObjectiveFailed(f"{described} failed in {call}(): {type(raised).__name__}"
                           f"{': ' + text if text else ''} (--debug shows the traceback)")


def describe_objective(label: str, plugin: str, distribution: str | None, version: str | None) -> str:
    """``objective 'mlm' (plugin mlm from plmforge 0.1.0)``."""
    source = f" from {distribution} {version or ''}".rstrip() if distribution else ""
    return f"objective {label!r} (plugin {plugin}{source})"


def is_disk_full(error: BaseException) -> bool:
    """True for ENOSPC however it arrives (safetensors reports it as a SafetensorError with the OS text)."""
    return any((isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e)
               for e in _chain(error))
