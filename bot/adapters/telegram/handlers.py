"""Commands, plain-text prompts and button presses: each turns a Telegram update into one core call.

Idempotency keys come from the update itself (a message is (chat, message id); a press is its callback
query id), so an update Telegram delivers twice never charges twice. Every handler runs inside
`_answering`, which turns a BotError into its plain words in the chat; anything else reaches on_error,
which logs it and answers with a short apology. Tracebacks go to the log, never to a chat."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator

from telegram import (
    ForceReply,
    InlineKeyboardMarkup,
    MaybeInaccessibleMessage,
    Message,
    Update,
    User,
)
from telegram.constants import ChatType, MessageEntityType
from telegram.ext import ContextTypes

from bot.adapters import wording
from bot.adapters.telegram import buttons, render
from bot.adapters.telegram.context import PLATFORM, destination
from bot.adapters.telegram.history import HistorySender
from bot.adapters.telegram.pictures import Albums, PictureRef, download, picture_of, refuse_too_big
from bot.adapters.telegram.sending import ChatGone, Sender, answer_query
from bot.core.account_service import AccountService
from bot.core.errors import BotError, Forbidden, ImagesUnavailable, InvalidRequest
from bot.core.models import UserIdentity
from bot.core.prompt import parse_command_text
from bot.core.prompt_questions import PromptQuestion, PromptQuestions, QuestionKind
from bot.core.service import GenerationService
from bot.core.storage.base import EXTENSIONS

log = logging.getLogger(__name__)

Context = ContextTypes.DEFAULT_TYPE

# Deep-link payloads are typed by whoever made the link: only these exact values mean anything.
START_PAYLOAD = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HISTORY_PAYLOAD = "history"
# iOS and macOS turn a typed "--" into a dash: "—ar 16:9" means "--ar 16:9".
_DASHED_FLAG = re.compile(r"(?:(?<=\s)|^)[—–]([A-Za-z])")


def identity(user: User) -> UserIdentity:
    return UserIdentity(PLATFORM, str(user.id), user.full_name or user.username or "")


def command_argument(message: Message) -> str:
    """The text after the leading /command (or /command@bot)."""
    text = message.text or ""
    for entity in message.entities:
        if entity.type == MessageEntityType.BOT_COMMAND and entity.offset == 0:
            return _utf16_slice(text, entity.length)
    return text


def _utf16_slice(text: str, units: int) -> str:
    # Entity offsets count UTF-16 code units: a command is ASCII, but be exact anyway.
    # surrogatepass: a lone surrogate (JSON can carry one) survives the round trip instead of raising.
    return text.encode("utf-16-le", "surrogatepass")[units * 2 :].decode("utf-16-le", "surrogatepass").strip()


def normalise_flags(text: str) -> str:
    return _DASHED_FLAG.sub(r"--\1", text)


def message_key(message: Message) -> str:
    return f"m:{message.chat.id}:{message.message_id}"


class TelegramHandlers:
    def __init__(
        self, service: GenerationService, accounts: AccountService, questions: PromptQuestions, sender: Sender,
        history: HistorySender,
    ) -> None:
        self.service = service
        self.accounts = accounts
        self.questions = questions
        self.sender = sender
        self.history_sender = history
        self.bot_username = ""  # known once the bot has called getMe (frontend.start)
        self.albums = Albums(self._pictures)

    # --- replies -------------------------------------------------------------------------------

    async def _reply(
        self, message: Message | MaybeInaccessibleMessage, text: str, keyboard: InlineKeyboardMarkup | None = None
    ) -> None:
        thread = message.message_thread_id if isinstance(message, Message) and message.is_topic_message else None
        await self.sender.text(message.chat.id, text, reply_to=message.message_id, thread_id=thread, keyboard=keyboard)

    def _deep_link(self, payload: str) -> str:
        return f"https://t.me/{self.bot_username}?start={payload}"

    @contextlib.asynccontextmanager
    async def _answering(self, update: Update) -> AsyncIterator[None]:
        """Where a BotError becomes words in the chat: as a reply to the command, or to the message whose
        button was pressed. A chat we can no longer write to ends the update quietly."""
        # The command, or the message whose button was pressed.
        async with self._answering_to(update.effective_message):
            yield

    @contextlib.asynccontextmanager
    async def _answering_to(self, message: Message | MaybeInaccessibleMessage | None) -> AsyncIterator[None]:
        try:
            yield
        except ChatGone as gone:
            log.info("telegram: chat %s is gone: %s", gone.chat_id, gone.reason)
        except BotError as error:
            if message is not None:
                await self._reply(message, render.plain(error.user_message))

    # --- commands ------------------------------------------------------------------------------

    async def start(self, update: Update, context: Context) -> None:
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        async with self._answering(update):
            payload = context.args[0] if context.args else ""
            if payload and not START_PAYLOAD.match(payload):
                log.info("telegram: ignoring a malformed /start payload")
                payload = ""
            if payload == HISTORY_PAYLOAD and message.chat.type == ChatType.PRIVATE:
                await self.history_sender.send_page(identity(user), message.chat.id, 0)
                return
            balance = await self.accounts.balance(identity(user))
            await self._reply(
                message,
                render.welcome_text(
                    user.first_name, balance, self.bot_username, self.service.model_choices(),
                    self.service.default_model,
                ),
            )

    async def help(self, update: Update, context: Context) -> None:
        if update.effective_message is None:
            return
        async with self._answering(update):
            text = render.help_text(self.bot_username, self.service.model_choices(), self.service.default_model)
            await self._reply(update.effective_message, text)

    async def imagine(self, update: Update, context: Context) -> None:
        message = update.effective_message
        if message is None:
            return
        picture = picture_of(message.reply_to_message)
        if picture is not None and update.effective_user is not None:
            # `/imagine <prompt>` in reply to a picture: an edit of it.
            async with self._answering(update):
                await self._edit(update.effective_user, message, command_argument(message), [picture])
            return
        await self._imagine(update, message, command_argument(message))

    async def prompt(self, update: Update, context: Context) -> None:
        """Plain text in a private chat is a prompt."""
        message = update.effective_message
        if message is not None and message.text:
            await self._imagine(update, message, message.text)

    async def _imagine(self, update: Update, message: Message, text: str) -> None:
        user = update.effective_user
        if user is None:
            return
        async with self._answering(update):
            request = parse_command_text(normalise_flags(text))
            await self.service.imagine(
                identity(user), request, destination(message.chat, message, message.message_id), message_key(message)
            )
        # Accepted: the observer's on_queued has posted the status message. A duplicate shows nothing new.

    # --- pictures: edits and remixes ----------------------------------------------------------------

    async def picture(self, update: Update, context: Context) -> None:
        """A photo, or a file. Captioned `/imagine <prompt>` (or, in a private chat, any caption) it is an
        edit of that picture; an album's pictures are gathered first and go together; a picture with no
        caption, in a private chat, gets a question whose reply is the prompt."""
        message = update.effective_message
        if message is None or update.effective_user is None:
            return
        if message.media_group_id:
            self.albums.add(message)
            return
        await self._pictures([message])

    async def _pictures(self, messages: list[Message]) -> None:
        first = messages[0]
        user = first.from_user
        if user is None:
            return
        captioned = next((m for m in messages if m.caption), None)
        async with self._answering_to(first):
            prompt = self._caption_prompt(captioned) if captioned is not None else None
            if prompt is not None:
                explicit = captioned is not None and (captioned.caption or "").startswith("/")
                pictures = [p for m in messages if (p := picture_of(m, any_document=explicit)) is not None]
                await self._edit(user, captioned or first, prompt, pictures)
            elif captioned is None and first.chat.type == ChatType.PRIVATE:
                await self._ask_what_to_do(user, messages)

    def _caption_prompt(self, message: Message) -> str | None:
        """The prompt a caption gives: after `/imagine` (or `/imagine@ThisBot`), or all of it in a private
        chat; None when the caption is not for us (another command, another bot, a group's chatter)."""
        caption = message.caption or ""
        command = next(
            (e for e in message.caption_entities if e.type == MessageEntityType.BOT_COMMAND and e.offset == 0), None
        )
        if command is None:
            return caption if message.chat.type == ChatType.PRIVATE else None
        name, _, mention = caption[1 : command.length].partition("@")
        if name.lower() != "imagine" or (mention and mention.lower() != self.bot_username.lower()):
            return None
        return _utf16_slice(caption, command.length)

    async def _edit(self, user: User, message: Message, text: str, pictures: list[PictureRef]) -> None:
        """Check what can be checked before downloading (size, how many the model takes), then download
        the pictures and ask the core for an edit of them."""
        request = parse_command_text(normalise_flags(text))
        refuse_too_big(pictures)
        self.service.refuse_edit_unless_possible(request, len(pictures))
        inputs = [await download(self.sender.bot, picture) for picture in pictures]
        await self.service.imagine(
            identity(user), request, destination(message.chat, message, message.message_id), message_key(message),
            inputs=inputs,
        )

    async def _ask_what_to_do(self, user: User, messages: list[Message]) -> None:
        pictures = [p for m in messages if (p := picture_of(m)) is not None]
        if not pictures:
            raise InvalidRequest("That file isn't a picture I can use. Send a photo, or a PNG, JPEG or WebP file.")
        refuse_too_big(pictures)
        first = messages[0]
        asked = await self.sender.text(
            first.chat.id, render.what_to_do(len(pictures)), reply_to=first.message_id,
            keyboard=ForceReply(input_field_placeholder="What should I do with it?"),
        )
        await self.questions.remember(PromptQuestion(
            PLATFORM, str(first.chat.id), str(asked.message_id), QuestionKind.EDIT, str(user.id),
            file_refs=tuple(p.file_id for p in pictures),
        ))

    async def _ask_for_remix(
        self, who: UserIdentity, image_id: str, message: Message | MaybeInaccessibleMessage
    ) -> None:
        source = await self.service.remix_source(who, image_id, str(message.chat.id))
        asked = await self.sender.text(
            message.chat.id, render.remix_question(source.prompt), reply_to=message.message_id,
            keyboard=ForceReply(input_field_placeholder="The new prompt"),
        )
        await self.questions.remember(PromptQuestion(
            PLATFORM, str(message.chat.id), str(asked.message_id), QuestionKind.REMIX, who.platform_user_id,
            image_id=image_id,
        ))

    async def reply(self, update: Update, context: Context) -> None:
        """Text in reply to one of the bot's messages: the answer to a question it asked (the prompt for an
        edit or a remix); anything else is, in a private chat, a plain prompt."""
        message, user = update.effective_message, update.effective_user
        if message is None or user is None or not message.text:
            return
        replied = message.reply_to_message
        async with self._answering(update):
            question = None
            if replied is not None and replied.from_user is not None and replied.from_user.is_bot:
                question = await self.questions.find(PLATFORM, str(message.chat.id), str(replied.message_id))
            if question is None:
                if message.chat.type != ChatType.PRIVATE:
                    return
                picture = picture_of(replied)
                if picture is not None:  # in the private chat, a reply to a picture is an edit of it
                    await self._edit(user, message, message.text, [picture])
                else:
                    await self._imagine(update, message, message.text)
                return
            if question.kind == QuestionKind.REMIX:
                assert question.image_id is not None
                await self.service.remix(
                    identity(user), question.image_id, message.text,
                    destination(message.chat, message, message.message_id), message_key(message),
                )
            else:
                pictures = [PictureRef(file_id, None) for file_id in question.file_refs]
                await self._edit(user, message, message.text, pictures)

    async def history(self, update: Update, context: Context) -> None:
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        async with self._answering(update):
            page = _page_argument(context.args)
            if message.chat.type == ChatType.PRIVATE:
                await self.history_sender.send_page(identity(user), message.chat.id, page)
                return
            # In a group, one's history is nobody else's business: it goes to the private chat.
            if await self._history_in_private(user, message, page):
                await self._reply(message, render.HISTORY_SENT)

    async def _history_in_private(self, user: User, message: Message | MaybeInaccessibleMessage, page: int) -> bool:
        """A history page sent to the user's private chat; if they never opened one, a link to open it
        (as a reply to `message`) and False."""
        try:
            await self.history_sender.send_page(identity(user), user.id, page)
        except ChatGone:
            await self._reply(
                message,
                render.HISTORY_NEEDS_PRIVATE_CHAT,
                keyboard=buttons.deep_link_keyboard(self._deep_link(HISTORY_PAYLOAD)),
            )
            return False
        return True

    async def models(self, update: Update, context: Context) -> None:
        if update.effective_message is None:
            return
        async with self._answering(update):
            text = render.models_text(self.service.model_choices(), self.service.default_model)
            await self._reply(update.effective_message, text)

    async def balance(self, update: Update, context: Context) -> None:
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        async with self._answering(update):
            text = render.balance_text(await self.accounts.balance(identity(user)))
            # Admins grant credits by numeric id, which Telegram doesn't show users: tell them theirs.
            await self._reply(message, f"{text}\n\nYour Telegram id: {user.id}")

    async def grant(self, update: Update, context: Context) -> None:
        await self._adjust(update, context, sign=1)

    async def revoke(self, update: Update, context: Context) -> None:
        await self._adjust(update, context, sign=-1)

    async def _adjust(self, update: Update, context: Context, sign: int) -> None:
        """`/grant <user id> <amount>`, or `/grant <amount>` in reply to the user's message."""
        message, user = update.effective_message, update.effective_user
        if message is None or user is None:
            return
        admin = identity(user)
        command = "grant" if sign > 0 else "revoke"
        async with self._answering(update):
            if not self.accounts.is_admin(admin):
                raise Forbidden("Only the bot's admins can change credits.")
            target, amount = _adjust_arguments(message, context.args or [], command)
            result = await self.accounts.grant(admin, target, sign * amount, message_key(message))
            await self._reply(message, render.adjusted_text(target, amount, result.applied, result.balance))

    async def unknown_command(self, update: Update, context: Context) -> None:
        if update.effective_message is not None:
            async with self._answering(update):
                await self._reply(update.effective_message, render.UNKNOWN_COMMAND)

    # --- buttons -------------------------------------------------------------------------------

    async def button(self, update: Update, context: Context) -> None:
        query = update.callback_query
        if query is None:
            return
        action = buttons.decode(query.data)
        message = query.message
        if action is None or message is None:
            await answer_query(query, render.UNKNOWN_BUTTON if action is None else render.NO_MESSAGE, alert=True)
            return
        if isinstance(action, buttons.Cancel) and action.owner_id != str(query.from_user.id):
            await answer_query(query, render.NOT_YOURS_TO_CANCEL, alert=True)
            return
        # Answer at once (the client spins until then, and late answers fail); the work follows.
        await answer_query(query, render.toast(action))
        full_message = message if isinstance(message, Message) else None
        where = destination(message.chat, full_message, message.message_id)
        who = identity(query.from_user)
        chat_id = str(message.chat.id)
        key = f"c:{query.id}"
        async with self._answering(update):
            match action:
                case buttons.Regenerate(generation_id):
                    await self.service.regenerate(who, generation_id, where, key)
                case buttons.Vary(image_id):
                    await self.service.vary(who, image_id, where, key)
                case buttons.Cancel(generation_id, _):
                    await self.service.cancel(who, generation_id, chat_id)
                case buttons.Remix(image_id):
                    await self._ask_for_remix(who, image_id, message)
                case buttons.Originals(generation_id):
                    await self._send_originals(who, generation_id, message.chat.id, message.message_id, full_message)
                case buttons.PageButton(page) if message.chat.type == ChatType.PRIVATE:
                    await self.sender.drop_keyboard(message.chat.id, message.message_id)
                    await self.history_sender.send_page(who, query.from_user.id, page)
                case buttons.PageButton(page):
                    # Pressed in a group: as /history there, the page goes to the private chat, or a link
                    # to open one comes back.
                    if await self._history_in_private(query.from_user, message, page):
                        await self._reply(message, render.HISTORY_SENT)

    async def _send_originals(
        self, who: UserIdentity, generation_id: str, chat_id: int, message_id: int, message: Message | None
    ) -> None:
        item = await self.service.generation(who, generation_id, str(chat_id))
        thread = message.message_thread_id if message is not None and message.is_topic_message else None
        try:
            files = await self.service.load_files(sorted(item.images, key=lambda image: image.index))
        except ImagesUnavailable:
            raise InvalidRequest("The original files are no longer available.") from None
        if not files:
            raise InvalidRequest("That generation has no images.")
        documents = [
            (file.data, f"{generation_id}-{file.record.index + 1}.{EXTENSIONS.get(file.record.mime_type, 'png')}")
            for file in files
        ]
        await self.sender.documents(chat_id, documents, reply_to=message_id, thread_id=thread)

    # --- errors --------------------------------------------------------------------------------

    async def on_error(self, update: object, context: Context) -> None:
        """The last stop for anything a handler didn't expect: logged in full, never shown in a chat."""
        error = context.error
        if isinstance(error, ChatGone):
            log.info("telegram: chat %s is gone: %s", error.chat_id, error.reason)
            return
        update_id = update.update_id if isinstance(update, Update) else None
        log.error("telegram: update %s failed", update_id, exc_info=error)
        if not isinstance(update, Update):
            return
        try:
            if update.callback_query is not None:
                await answer_query(update.callback_query, wording.GENERIC_ERROR, alert=True)
            if update.effective_chat is not None and update.effective_message is not None:
                await self._reply(update.effective_message, wording.GENERIC_ERROR)
        except Exception:
            log.warning("telegram: could not tell the user about the error", exc_info=True)


def _page_argument(args: list[str] | None) -> int:
    if args and args[0].isdigit() and 0 < int(args[0]) <= buttons.MAX_PAGE:
        return int(args[0]) - 1
    return 0


def _adjust_arguments(message: Message, args: list[str], command: str) -> tuple[UserIdentity, int]:
    usage = f"Usage: /{command} <user id> <amount>, or reply to someone's message with /{command} <amount>."
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and not replied.from_user.is_bot and len(args) == 1:
        target, amount_text = identity(replied.from_user), args[0]
    elif len(args) == 2 and args[0].removeprefix("telegram:").isdigit():
        target, amount_text = UserIdentity(PLATFORM, args[0].removeprefix("telegram:")), args[1]
    else:
        raise InvalidRequest(usage)
    if not amount_text.isdigit() or not 0 < int(amount_text) <= 1_000_000:
        raise InvalidRequest("The amount must be a whole number between 1 and 1000000.")
    return target, int(amount_text)
