"""How the core tells a front end what happens to a job. Each front end implements one observer;
it decides how to show each event on its platform."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from bot.core.models import Generation, ImageFile


@dataclass(frozen=True)
class DeliveryReceipt:
    """What the front end wants remembered about a delivery."""

    message_id: str | None = None
    file_refs: dict[str, str] = field(default_factory=dict)  # image id -> platform file reference


@dataclass(frozen=True)
class PartReceipt:
    """One part of a result the platform accepted: its message, and the platform's handle of each image in it."""

    message_id: str | None = None
    file_refs: Mapping[str, str] = field(default_factory=dict)  # image id -> platform file reference


class DeliveredParts(Protocol):
    """The parts of one job's result already in its chat, and the way to add one."""

    @property
    def sent(self) -> Mapping[str, PartReceipt]:
        """By part name: what was posted and accepted, in this delivery or an earlier one."""

    async def record(
        self, part: str, message_id: str | None = None, file_refs: Mapping[str, str] | None = None
    ) -> None:
        """Written at once (waiting out a database outage): call it as soon as the platform accepts a part,
        before posting the next."""

    def receipt(self) -> DeliveryReceipt:
        """All the parts' file references together, to return from on_completed_in_parts."""


class JobObserver(Protocol):
    """Implemented by each front end. Methods may raise on a transient platform error: a failed final
    delivery is retried later (the job stays undelivered); errors in progress updates are only logged.

    Ordering: the worker is woken before on_queued is sent (a job should not wait for a chat round trip),
    so on_started and on_preview may arrive while on_queued is still running; the final event (completed,
    failed, cancelled) waits until on_queued has returned and its id is stored, and carries that id in
    job.destination.message_id (see jobs/announcements). Each event is sent once, in order per job except
    for that overlap."""

    platform: str

    async def on_queued(self, job: Generation, position: int) -> str | None:
        """Accepted and waiting. May return the id of a status message to remember with the job."""

    async def on_started(self, job: Generation) -> None:
        """A worker began making the images."""

    async def on_preview(self, job: Generation, image: bytes, mime_type: str) -> None:
        """A partial image streamed by the provider. Show sparingly."""

    async def on_completed(self, job: Generation, images: Sequence[ImageFile]) -> DeliveryReceipt | None:
        """Succeeded or partial (job.status); job.credits_refunded says what failed images gave back."""

    async def on_failed(self, job: Generation) -> None:
        """No image was made: job.error_code, job.error_message (plain words), job.credits_refunded."""

    async def on_cancelled(self, job: Generation) -> None:
        """Cancelled by its owner; job.credits_refunded was given back."""


@runtime_checkable
class DeliversInParts(Protocol):
    """A JobObserver may also implement this; a finished job's images are then delivered through it
    instead of on_completed."""

    async def on_completed_in_parts(
        self, job: Generation, images: Sequence[ImageFile], parts: DeliveredParts
    ) -> DeliveryReceipt | None:
        """As on_completed, but post only the parts `parts.sent` does not hold, recording each with
        `parts.record` as soon as the platform accepts it. The receipt returned (None: parts.receipt()) is
        kept with the job once it is delivered."""
