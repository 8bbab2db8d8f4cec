"""asyncio helpers shared by the core."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def all_of(*work: Awaitable[T]) -> list[T]:
    """asyncio.gather, without its task per awaitable when there is only one (most jobs make one image in
    one provider call, and a task per job shows in the throughput profile)."""
    if len(work) == 1:
        return [await work[0]]
    return list(await asyncio.gather(*work))
