"""How the core tells a front end what happens to a job. Each front end implements one observer;
it decides how to show each event on its platform."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bot.core.models import Generation, ImageFile


@dataclass(frozen=True)
class DeliveryReceipt:
    """What the front end wants remembered about a delivery."""

    message_id: str | None = None
    file_refs: dict[str, str] = field(default_factory=dict)  # image id -> platform file reference


class JobObserver(Protocol):
    """Implemented by each front end. Methods may raise on a transient platform error: a failed final
    delivery is retried later (the job stays undelivered); errors in progress updates are only logged.

    Ordering: the worker is woken before on_queued is sent (a job should not wait for a chat round trip),
    so on_started and even on_completed may arrive while on_queued is still running. Each event is sent
    once, in order per job except for that overlap."""

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
