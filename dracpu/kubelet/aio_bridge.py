"""Typed bridge between trio and asyncio (trio-asyncio has no type information).

grpclib servers run as asyncio code on a trio-asyncio loop; dracpu's handlers are trio code.
These wrappers are the only place this package touches trio-asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, ParamSpec, TypeVar, cast

import trio_asyncio  # type: ignore[import-untyped]

P = ParamSpec("P")
T = TypeVar("T")


def open_loop() -> AbstractAsyncContextManager[Any]:
    """Open a trio-asyncio loop for the block (``async with open_loop(): ...``)."""
    return cast(AbstractAsyncContextManager[Any], trio_asyncio.open_loop())


def current_loop() -> asyncio.AbstractEventLoop:
    """The trio-asyncio loop of the calling trio task (inside :func:`open_loop`)."""
    loop = trio_asyncio.current_loop.get()
    if loop is None:
        raise RuntimeError("no trio-asyncio loop is open in this task")
    return cast(asyncio.AbstractEventLoop, loop)


def has_loop() -> bool:
    """Whether the calling trio task already runs inside a trio-asyncio loop."""
    return trio_asyncio.current_loop.get() is not None


async def run_asyncio(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """From trio, run the asyncio coroutine function ``fn``; asyncio code sees a loop.

    Cancellation: cancelling the trio caller cancels the asyncio task, and the trio caller
    waits for it to finish.
    """
    return cast(T, await trio_asyncio.aio_as_trio(fn)(*args, **kwargs))


async def run_trio(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """From asyncio (on a trio-asyncio loop), run the trio async function ``fn``.

    Cancellation: cancelling the asyncio task cancels the trio task, which raises
    ``trio.Cancelled`` inside ``fn``; the asyncio caller then gets ``CancelledError``.
    """
    return cast(T, await trio_asyncio.trio_as_aio(fn)(*args, **kwargs))


__all__ = ["current_loop", "has_loop", "open_loop", "run_asyncio", "run_trio"]
