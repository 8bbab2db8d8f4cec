"""Questions waiting for a reply that will be the prompt (a platform's ForceReply): kept in Postgres, so a
reply that arrives after a restart, or at another process, still finds what it answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from bot.core.database_errors import translates_connection_errors


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


class PromptQuestions:
    """The questions front ends asked, by the message that asked them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @translates_connection_errors
    async def remember(self, question: PromptQuestion) -> None:
        """A front end asked for a prompt (a ForceReply): the reply will find this, even after a restart."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO image.prompt_questions
                       (platform, chat_id, message_id, kind, asked_of, image_id, file_refs)
                   VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
                   ON CONFLICT (platform, chat_id, message_id) DO NOTHING""",
                question.platform, question.chat_id, question.message_id, question.kind, question.asked_of,
                question.image_id, json.dumps(list(question.file_refs)),
            )

    @translates_connection_errors
    async def find(self, platform: str, chat_id: str, message_id: str) -> PromptQuestion | None:
        """The question a reply answers, if the bot asked one with that message."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT platform, chat_id, message_id, kind, asked_of, image_id, file_refs
                   FROM image.prompt_questions WHERE platform = $1 AND chat_id = $2 AND message_id = $3""",
                platform, chat_id, message_id,
            )
        if row is None:
            return None
        return PromptQuestion(
            row["platform"], row["chat_id"], row["message_id"], QuestionKind(row["kind"]), row["asked_of"],
            row["image_id"], tuple(json.loads(row["file_refs"])),
        )
