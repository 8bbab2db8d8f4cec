"""Questions waiting for a reply that will be the prompt (a platform's ForceReply): kept in Postgres, so a
reply that arrives after a restart, or at another process, still finds what it answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from bot.core.database import Connection


class QuestionKind(StrEnum):
    EDIT = "edit"  # "what should I do with this picture?": file_refs name the pictures
    REMIX = "remix"  # "the new prompt for this image?": image_id names it


@dataclass(frozen=True)
class PromptQuestion:
    platform: str
    chat_id: str
    message_id: str  # the question's message: the reply points at it
    kind: QuestionKind
    asked_of: str  # the platform user id
    image_id: str | None = None
    file_refs: tuple[str, ...] = ()


async def remember(conn: Connection, question: PromptQuestion) -> None:
    await conn.execute(
        """INSERT INTO image.prompt_questions (platform, chat_id, message_id, kind, asked_of, image_id, file_refs)
           VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
           ON CONFLICT (platform, chat_id, message_id) DO NOTHING""",
        question.platform, question.chat_id, question.message_id, question.kind, question.asked_of,
        question.image_id, json.dumps(list(question.file_refs)),
    )


async def find(conn: Connection, platform: str, chat_id: str, message_id: str) -> PromptQuestion | None:
    row = await conn.fetchrow(
        """SELECT platform, chat_id, message_id, kind, asked_of, image_id, file_refs FROM image.prompt_questions
           WHERE platform = $1 AND chat_id = $2 AND message_id = $3""",
        platform, chat_id, message_id,
    )
    if row is None:
        return None
    return PromptQuestion(
        row["platform"], row["chat_id"], row["message_id"], QuestionKind(row["kind"]), row["asked_of"],
        row["image_id"], tuple(json.loads(row["file_refs"])),
    )
