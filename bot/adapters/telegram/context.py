"""What a job must remember to reach Telegram again, possibly from another process after a restart.
It is stored as JSON in the job's Destination.context (Postgres), so it holds only plain values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from telegram import Chat, Message
from telegram.constants import ChatType

from bot.core.models import Destination, Generation

PLATFORM = "telegram"


def is_group(chat: Chat) -> bool:
    return chat.type in (ChatType.GROUP, ChatType.SUPERGROUP)


@dataclass(frozen=True)
class ReplyContext:
    chat_id: int
    reply_to: int | None  # the message the job's messages answer
    thread_id: int | None  # the forum topic, if any
    in_group: bool
    # Set once an album was posted (albums can't carry buttons: a retried delivery posts only those).
    album_id: int | None = None
    status_id: int | None = None
    album_refs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_job(cls, job: Generation) -> ReplyContext:
        raw = job.destination.context
        refs = raw.get("album_refs")
        return cls(
            chat_id=int(job.destination.chat_id),
            reply_to=_int(raw.get("reply_to")),
            thread_id=_int(raw.get("thread")),
            in_group=bool(raw.get("group")),
            album_id=_int(raw.get("album")),
            status_id=_int(raw.get("status")),
            album_refs=dict(refs) if isinstance(refs, dict) else {},
        )

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"reply_to": self.reply_to, "group": self.in_group}
        if self.thread_id is not None:
            raw["thread"] = self.thread_id
        return raw

    @staticmethod
    def album_json(album_id: int, status_id: int | None, refs: dict[str, str]) -> dict[str, Any]:
        """What is added to a job's context once its album is out."""
        return {"album": album_id, "status": status_id, "album_refs": refs}


def destination(chat: Chat, message: Message | None, message_id: int | None) -> Destination:
    """Where a job's messages go: this chat, as replies to `message_id`, in its forum topic if any."""
    thread = message.message_thread_id if message is not None and message.is_topic_message else None
    context = ReplyContext(chat.id, message_id, thread, is_group(chat))
    return Destination(PLATFORM, str(chat.id), None, context.to_json())


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
