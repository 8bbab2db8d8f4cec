"""Data that crosses the boundary between the core and the front ends."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any


class GenerationKind(StrEnum):
    """How a generation was asked for. The values are what image.generations.kind holds."""

    IMAGINE = "imagine"
    REGENERATE = "regenerate"  # the same request again with a new seed
    VARIATION = "variation"  # conditioned on one image of an earlier generation
    REMIX = "remix"  # one image of an earlier generation, with a new prompt


class GenerationStatus(StrEnum):
    """Where a generation stands. The values are what image.generations.status holds."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # some images made, the others refunded
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def has_images(self) -> bool:
        return self in (GenerationStatus.SUCCEEDED, GenerationStatus.PARTIAL)


TERMINAL_STATUSES: frozenset[GenerationStatus] = frozenset(
    {GenerationStatus.SUCCEEDED, GenerationStatus.PARTIAL, GenerationStatus.FAILED, GenerationStatus.CANCELLED}
)


@dataclass(frozen=True)
class UserIdentity:
    """Who is asking, as the platform names them."""

    platform: str
    platform_user_id: str
    display_name: str = ""


@dataclass(frozen=True)
class Destination:
    """Where a result goes: the chat or channel, optionally the message to update, and adapter context
    (e.g. a Discord interaction token), stored with the job so delivery survives a restart."""

    platform: str
    chat_id: str
    message_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImagineRequest:
    """What a user asked for, before validation (see core.prompt.validate_request)."""

    prompt: str
    negative_prompt: str | None = None
    model: str | None = None
    aspect_ratio: str | None = None
    count: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Request:
    """What a user asked for, validated and complete (see core.prompt.validate_request). An option is a
    field here and a column of image.generations of the same name: the row mapping and the accepting SQL
    read both by name."""

    prompt: str
    negative_prompt: str | None
    model: str  # a name in the catalogue
    aspect_ratio: str
    count: int
    seed: int

    def only_request(self) -> Request:
        """Just what was asked (of a Generation: without the job around it)."""
        return Request(**request_fields(self))


def request_fields(request: Request) -> dict[str, Any]:
    """A request's options by name, which are also their column names."""
    return {f.name: getattr(request, f.name) for f in fields(Request)}


@dataclass(frozen=True)
class Generation(Request):
    """A request and what became of it: whose, which kind, where it stands, where its result goes.

    Words: a *generation* is this record (image.generations; its id is `generation_id` everywhere); a
    *job* is the work of making one (bot/core/jobs, bot/core/queue.py), never the record itself."""

    id: str
    user_id: int
    owner: UserIdentity
    kind: GenerationKind
    parent_generation_id: str | None
    parent_image_id: str | None
    status: GenerationStatus
    error_code: str | None
    error_message: str | None
    warnings: tuple[str, ...]
    credits_reserved: int
    credits_refunded: int
    destination: Destination
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished


@dataclass(frozen=True)
class ImageRecord:
    id: str
    generation_id: str
    index: int
    storage_key: str
    url: str
    mime_type: str
    width: int
    height: int
    bytes: int
    seed: int | None
    file_refs: dict[str, str]


@dataclass(frozen=True)
class InputRecord:
    """A picture the user brought for a generation to start from (see core.input_images)."""

    id: str
    generation_id: str
    index: int
    storage_key: str
    sha256: str
    mime_type: str
    width: int
    height: int
    bytes: int


@dataclass(frozen=True)
class ImageFile:
    """An image with its bytes, as handed to a front end for upload."""

    record: ImageRecord
    data: bytes


@dataclass(frozen=True)
class Accepted:
    generation: Generation
    position: int  # jobs ahead of this one in the queue
    balance: int | None  # after the reservation; None when credits are off
    duplicate: bool = False  # the same platform event was delivered twice: nothing new was charged


@dataclass(frozen=True)
class HistoryItem:
    generation: Generation
    images: tuple[ImageRecord, ...]
    inputs: tuple[InputRecord, ...] = ()  # the pictures it started from: an edit


@dataclass(frozen=True)
class HistoryPage:
    items: tuple[HistoryItem, ...]
    page: int  # 0-based
    page_size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))

    @property
    def has_previous(self) -> bool:
        return self.page > 0

    @property
    def has_next(self) -> bool:
        return self.page + 1 < self.pages


@dataclass(frozen=True)
class ModelPrice:
    name: str
    label: str
    cost: int


@dataclass(frozen=True)
class Balance:
    credits_enabled: bool
    balance: int
    models: tuple[ModelPrice, ...]
    bought: int = 0  # credits bought and kept (purchases less what their refunds took back)


@dataclass(frozen=True)
class LedgerEntry:
    delta: int
    reason: str
    generation_id: str | None
    created_at: datetime
