"""`@traced`: a span per call of a function, coroutine or not."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from recorder._core import Recorder, span

F = TypeVar("F", bound=Callable[..., Any])


@overload
def traced(function: F) -> F: ...
@overload
def traced(*, name: str | None = None, size: int = 64) -> Callable[[F], F]: ...


def traced(function: Any = None, *, name: str | None = None,
           size: int = 64) -> Any:
    """Record each call of the decorated function as a span (see `span`):
    "begin" at entry, "end <ns> ns" with the duration at exit, located at
    the function's definition, in the topic `name` (by default the
    function's module and qualified name). Coroutine functions are timed
    until they return, awaits included; generator functions from the first
    `next` until they are exhausted or closed.

    >>> @traced
    ... def add(a, b):
    ...     return a + b
    >>> add(1, 2)
    3
    >>> @traced(name="doc_total")
    ... def total(values):
    ...     return sum(values)
    >>> total([1, 2])
    3
    """
    if function is None:
        return functools.partial(traced, name=name, size=size)
    topic = Recorder(name or f"{function.__module__}.{function.__qualname__}",
                     size, f"span: {function.__qualname__}")
    code = getattr(function, "__code__", None)
    where = (f"{code.co_filename}:{code.co_firstlineno}" if code is not None
             else f"{function.__module__}:0")

    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def traced_generator(*args: Any, **kwargs: Any) -> Any:
            with span(topic, where):
                return (yield from function(*args, **kwargs))
        return traced_generator

    if inspect.iscoroutinefunction(function):
        @functools.wraps(function)
        async def traced_coroutine(*args: Any, **kwargs: Any) -> Any:
            with span(topic, where):
                return await function(*args, **kwargs)
        return traced_coroutine

    @functools.wraps(function)
    def traced_function(*args: Any, **kwargs: Any) -> Any:
        with span(topic, where):
            return function(*args, **kwargs)
    return traced_function
