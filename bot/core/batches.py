"""Writes gathered like a group commit: while one batch is being written, whatever is submitted meanwhile
waits and goes in the next one. A lone write goes out at once (no timer, no added latency); under load, many
jobs share one statement and one round trip instead of one each."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupedWriter(Generic[T, R]):
    """`write` takes a batch and returns one result per item, in order; it runs one batch at a time."""

    def __init__(self, write: Callable[[Sequence[T]], Awaitable[Sequence[R]]]) -> None:
        self._write = write
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._writing: asyncio.Task[None] | None = None

    def submit(self, item: T) -> asyncio.Future[R]:
        """The result of writing `item`, once its batch is written (or what writing it raised). Cancelling
        the wait does not stop the write: the batch is written for everyone in it."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._writing is None:
            self._writing = asyncio.create_task(self._drain())
        return done

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._write([item for item, _ in batch])
                except Exception as error:
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                else:
                    for (_, done), result in zip(batch, results, strict=True):
                        if not done.done():
                            done.set_result(result)
                batch = []
        finally:
            # Cancelled (the loop is closing): nobody is left waiting for ever.
            for _, done in [*batch, *self._pending]:
                done.cancel()
            self._pending = []
            self._writing = None
