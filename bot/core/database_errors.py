"""The database failing under a service call, told in plain words: every core service's public methods
wear `translates_connection_errors`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import asyncpg

from bot.core.errors import Contended, TemporarilyUnavailable

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

# The database connection failing, as opposed to a query being wrong.
CONNECTION_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    # asyncpg's state machine on a connection that died mid-operation.
    asyncpg.InternalClientError,
    OSError,
)


def translates_connection_errors(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """A dropped connection becomes a plain-words error; the pool replaces the connection for the next call.
    So does a deadlock, whose victim transaction Postgres rolled back whole."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except CONNECTION_ERRORS as error:
            log.warning("database unavailable during %s: %s", method.__name__, error)
            raise TemporarilyUnavailable() from error
        except asyncpg.DeadlockDetectedError as error:
            log.warning("deadlock during %s, rolled back: %s", method.__name__, error)
            raise Contended() from error

    return wrapper
