"""Slash commands and button presses: each one acknowledged at once, then translated into one core call.

Every handler runs inside `_answering`, which turns a BotError into its plain words, shown only to the
user (ephemeral), and anything else into a short apology; tracebacks go to the log, never to a chat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import discord
from discord import app_commands

from bot.adapters.discord import internals, pictures, render
from bot.adapters.discord.acks import ALREADY_ACKNOWLEDGED, UNKNOWN_INTERACTION, AckRefused, Deferral, EarlyAcks
from bot.adapters.discord.buttons import Action, ButtonPayload, decode
from bot.adapters.discord.context import PLATFORM, destination_for
from bot.adapters.discord.history import HistorySender
from bot.adapters.discord.intake import DiscordIntake
from bot.adapters.wording import GENERIC_ERROR, RESTARTING, plural, refund_text
from bot.core.account_service import AccountService
from bot.core.errors import BotError, InvalidRequest
from bot.core.models import Accepted, Destination, ImagineRequest, UserIdentity
from bot.core.prompt import parse_command_text
from bot.core.prompt_questions import PromptQuestion, PromptQuestions, QuestionKind
from bot.core.service import GenerationService

log = logging.getLogger(__name__)

MAX_PROMPT_OPTION = 4000  # the /imagine prompt option's length limit, as registered with Discord
# Commands doing their work (core calls, replies) at once. Small, so that under a burst the event loop
# keeps turning quickly: the gateway is read and new interactions acknowledged between their steps (the
# early deferral never waits for this; bench/burst.py measures the effect).
CONCURRENT_COMMANDS = 4

# Discord's codes for an interaction that can't be answered: already acknowledged (a redelivered event
# another handler took), or unknown (we were later than 3 seconds).
_UNANSWERABLE = (ALREADY_ACKNOWLEDGED, UNKNOWN_INTERACTION)
_APPLICATION_COMMAND = discord.InteractionType.application_command.value
_COMPONENT = discord.InteractionType.component.value
_JOB_BUTTONS = frozenset({Action.REGENERATE, Action.VARY})
_ATTACHMENT_OPTION = discord.AppCommandOptionType.attachment.value


class _Unanswerable(Exception):
    """Discord refused our acknowledgement: someone else answered this interaction, or it expired."""


def identity(user: discord.abc.User) -> UserIdentity:
    return UserIdentity(PLATFORM, str(user.id), user.display_name)


class DiscordHandlers:
    """What each command and button asks of the core. Thin: parse, acknowledge, call, reply."""

    def __init__(self, service: GenerationService, accounts: AccountService, questions: PromptQuestions) -> None:
        self.service = service
        self.accounts = accounts
        self.questions = questions
        self.history_sender = HistorySender(service)
        self.accepting = True
        self.early_acks: EarlyAcks | None = None
        self.intake: DiscordIntake | None = None
        self._working = asyncio.Semaphore(CONCURRENT_COMMANDS)

    def acknowledges_early(self, data: dict[str, Any]) -> bool:
        """Whether a raw interaction is one `_run_job` will defer publicly, so it may be deferred straight
        from the gateway event (bot.adapters.discord.acks): /imagine, 🔄 and V1–V4, when none of the
        refusals that come before the deferral applies (they are private, and a deferral can't be taken
        back): `_job_refusal`, and for /imagine the options `imagine` parses, read from the raw payload."""
        permissions = discord.Permissions(int(data.get("app_permissions") or 0))
        if self._job_refusal(data.get("guild_id"), permissions) is not None:
            return False
        inner = data.get("data") or {}
        if data.get("type") == _COMPONENT:
            payload = decode(str(inner.get("custom_id", "")))
            return payload is not None and payload.action in _JOB_BUTTONS
        if data.get("type") != _APPLICATION_COMMAND or inner.get("name") != "imagine":
            return False
        if any(option.get("type") == _ATTACHMENT_OPTION for option in inner.get("options") or ()):
            return False  # a picture is checked first, and a refusal must stay private
        options = {option["name"]: option.get("value") for option in inner.get("options") or ()}
        prompt = options.get("prompt")
        if not isinstance(prompt, str) or not 1 <= len(prompt) <= MAX_PROMPT_OPTION:
            return False
        request = ImagineRequest(
            prompt, options.get("negative"), options.get("model"), options.get("aspect_ratio"),
            options.get("count"), options.get("seed"),
        )
        try:
            parse_command_text(prompt, request)
        except BotError:
            return False
        return True

    # --- slash commands ------------------------------------------------------------------------

    async def imagine(
        self, interaction: discord.Interaction, options: ImagineRequest,
        attachments: list[discord.Attachment] | None = None,
    ) -> None:
        async with self._answering(interaction):
            if not await self._may_start_job(interaction):
                return
            # Parsing the inline --flags is instant and may refuse: do it before answering publicly.
            request = parse_command_text(options.prompt, options)
            who = identity(interaction.user)
            key = str(interaction.id)  # a redelivered interaction has the same id: never charged twice
            if attachments:
                # An edit: what can be refused without downloading is refused privately, before answering.
                pictures.refuse_too_big(attachments)
                self.service.refuse_edit_unless_possible(request, len(attachments))

                async def edit(where: Destination) -> Accepted:
                    inputs = [await pictures.download(a) for a in attachments]
                    return await self.service.imagine(who, request, where, key, inputs=inputs)

                await self._run_job(interaction, edit)
                return
            await self._run_job(interaction, lambda d: self.service.imagine(who, request, d, key))

    async def imagine_from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Apps → "Imagine from this image": a modal asks for the prompt. The pictures' addresses wait in
        Postgres for the submission, under this interaction's id."""
        async with self._answering(interaction):
            if not await self._may_start_job(interaction):
                return
            found = pictures.pictures_of(message)
            pictures.refuse_too_big(found)
            await self.questions.remember(PromptQuestion(
                PLATFORM, str(interaction.channel_id), str(interaction.id), QuestionKind.EDIT,
                str(interaction.user.id), file_refs=tuple(a.url for a in found),
            ))
            modal = pictures.prompt_modal("Imagine from this image", pictures.edit_custom_id(str(interaction.id)))
            await self._open_modal(interaction, modal)

    async def on_modal(self, interaction: discord.Interaction) -> None:
        """A submitted prompt modal: a remix of an image, or an edit of the pictures of a message."""
        purpose = pictures.decode_modal(pictures.modal_custom_id(interaction))
        if purpose is None:
            return  # not one of ours
        async with self._answering(interaction):
            if not await self._may_start_job(interaction):
                return
            prompt = pictures.submitted_prompt(interaction)
            who = identity(interaction.user)
            key = str(interaction.id)
            if purpose.kind == "r":
                await self._run_job(interaction, lambda d: self.service.remix(who, purpose.target, prompt, d, key))
                return
            question = await self.questions.find(PLATFORM, str(interaction.channel_id), purpose.target)
            if question is None:
                raise InvalidRequest("That request has expired. Please pick the message again.")
            request = parse_command_text(prompt)
            self.service.refuse_edit_unless_possible(request, len(question.file_refs))

            async def edit(where: Destination) -> Accepted:
                inputs = [await pictures.download_url(interaction.client, url) for url in question.file_refs]
                return await self.service.imagine(who, request, where, key, inputs=inputs)

            await self._run_job(interaction, edit)

    async def _open_modal(self, interaction: discord.Interaction, modal: discord.ui.Modal) -> None:
        """A modal must be the first response. Its submission is handled by on_modal from its custom_id,
        so discord.py's in-memory copy is let go at once."""
        await interaction.response.send_modal(modal)
        modal.stop()

    async def history(self, interaction: discord.Interaction) -> None:
        async with self._answering(interaction):
            if not await self._accepting(interaction):
                return
            await self._defer(interaction, thinking=True, ephemeral=interaction.guild_id is not None)
            await self.history_sender.show(interaction, identity(interaction.user))

    async def balance(self, interaction: discord.Interaction) -> None:
        async with self._answering(interaction):
            await self._defer(interaction, thinking=True, ephemeral=True)
            balance = await self.accounts.balance(identity(interaction.user))
            # The id is what an operator puts in ADMIN_IDS (discord:<id>).
            text = f"{render.balance_text(balance)}\n-# Your user id: {interaction.user.id}"
            await interaction.followup.send(text, ephemeral=True)

    async def models(self, interaction: discord.Interaction) -> None:
        async with self._answering(interaction):
            await self._defer(interaction, thinking=True, ephemeral=True)
            text = render.models_text(self.service.model_choices(), self.service.default_model)
            await interaction.followup.send(text, ephemeral=True)

    async def adjust_credits(self, interaction: discord.Interaction, target: discord.abc.User, amount: int) -> None:
        """`amount` > 0 grants, < 0 revokes. The core refuses anyone who isn't a configured admin."""
        async with self._answering(interaction):
            await self._defer(interaction, thinking=True, ephemeral=True)
            result = await self.accounts.grant(
                identity(interaction.user), identity(target), amount, idempotency_key=str(interaction.id)
            )
            name = render.clean(target.display_name, 80)
            if amount > 0:
                text = f"Added {plural(result.applied, 'credit')} to {name}."
            else:
                text = f"Removed {plural(-result.applied, 'credit')} from {name}."
            await interaction.followup.send(f"{text} Their balance is now {result.balance}.", ephemeral=True)

    async def model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        typed = current.strip().lower()
        choices = []
        for model in self.service.model_choices():
            if typed and typed not in model.name.lower() and typed not in model.label.lower():
                continue
            label = f"{model.label} — {plural(model.cost, 'credit')} per image"
            choices.append(app_commands.Choice(name=label[:100], value=model.name))
        return choices[:25]  # Discord's maximum

    # --- buttons -------------------------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction, payload: ButtonPayload | None) -> None:
        async with self._answering(interaction):
            if payload is None:
                await self.say(interaction, render.MALFORMED_BUTTON)
                return
            who = identity(interaction.user)
            chat = str(interaction.channel_id)
            key = str(interaction.id)
            if payload.action is Action.REGENERATE:
                if await self._may_start_job(interaction):
                    await self._run_job(interaction, lambda d: self.service.regenerate(who, payload.target, d, key))
            elif payload.action is Action.VARY:
                if await self._may_start_job(interaction):
                    await self._run_job(interaction, lambda d: self.service.vary(who, payload.target, d, key))
            elif payload.action is Action.REMIX:
                source = await self.service.remix_source(who, payload.target, chat)
                modal = pictures.prompt_modal("Remix", pictures.remix_custom_id(payload.target), source.prompt)
                await self._open_modal(interaction, modal)
            elif payload.action is Action.CANCEL:
                await self._defer(interaction, thinking=True, ephemeral=True)
                job = await self.service.cancel(who, payload.target, chat)
                await interaction.followup.send(f"Cancelled. {refund_text(job)}".strip(), ephemeral=True)
            elif payload.action is Action.DELETE:
                await self._defer(interaction)
                await self.service.delete(who, payload.target, chat)
                # After a deferred update, the "original response" is the message the button is on.
                await interaction.delete_original_response()
            elif payload.action is Action.PAGE:
                await self._defer(interaction)
                await self.history_sender.turn(interaction, who, payload.page)
            else:
                await self._defer(interaction)  # the page indicator: nothing to do

    # --- shared steps --------------------------------------------------------------------------

    async def _run_job(
        self, interaction: discord.Interaction, start: Callable[[Destination], Awaitable[Accepted]]
    ) -> None:
        """Answer publicly ("thinking…"), then hand the job to the core with that message as its home:
        the observer edits it from queued to the images."""
        if self.intake is not None:  # recorded while the deferral travels (see intake)
            self.intake.deferring(interaction.id, interaction.application_id, interaction.token)
        try:
            message_id = await self._defer(interaction, thinking=True)
        except Exception:
            # Refused or failed: it is answered some other way, or can't be; nothing for a restart to say.
            if self.intake is not None and await self.intake.deferred(interaction):
                await self.intake.handled(interaction)
            raise
        interaction.extras["public_thinking"] = True
        if message_id is None:
            message_id = (await interaction.original_response()).id
        # Recorded until its job is accepted or refused: a restart meanwhile answers it (see intake).
        recorded = self.intake is not None and await self.intake.deferred(interaction)
        try:
            accepted = await start(destination_for(interaction, message_id))
        finally:
            if recorded and self.intake is not None:
                await self.intake.handled(interaction)
        if accepted.duplicate:
            log.info("interaction %s was already handled as job %s", interaction.id, accepted.generation.id)

    async def _may_start_job(self, interaction: discord.Interaction) -> bool:
        refusal = self._job_refusal(interaction.guild_id, interaction.app_permissions)
        if refusal is not None:
            await self.say(interaction, refusal)
        return refusal is None

    def _job_refusal(self, guild_id: int | str | None, permissions: discord.Permissions) -> str | None:
        """Why a job can't start here, or None. Also read on the raw gateway event (`acknowledges_early`)."""
        if not self.accepting:
            return RESTARTING
        if guild_id is not None and not permissions.attach_files:
            return render.NEED_ATTACH_FILES
        return None

    async def _accepting(self, interaction: discord.Interaction) -> bool:
        if not self.accepting:
            await self.say(interaction, RESTARTING)
        return self.accepting

    async def _defer(
        self, interaction: discord.Interaction, *, thinking: bool = False, ephemeral: bool = False
    ) -> int | None:
        """Acknowledge the interaction (or adopt its early acknowledgement). Returns the id of the "thinking…"
        message, when Discord said it."""
        if "unanswerable" in interaction.extras:
            raise _Unanswerable(interaction.extras["unanswerable"])
        early: Deferral | None = interaction.extras.pop("deferral", None)
        if early is not None:
            return early.message_id
        try:
            response = await interaction.response.defer(thinking=thinking, ephemeral=ephemeral)
        except discord.HTTPException as error:
            if error.code == ALREADY_ACKNOWLEDGED and interaction.extras.get("early_ack"):
                # Our early deferral reached Discord; only its answer was lost on the way back.
                internals.mark_deferred(interaction)
                return None
            if error.code in _UNANSWERABLE:
                raise _Unanswerable(f"{error.code} {error.text}") from error
            raise
        return response.message_id if response is not None else None

    async def _adopt_early_ack(self, interaction: discord.Interaction) -> None:
        """Take over the deferral sent from the gateway event, if there was one. Never raises: a refusal
        is remembered for `_defer`, a failure leaves the usual deferral to be made."""
        if self.early_acks is None:
            return
        try:
            deferral = await self.early_acks.adopt(interaction)
        except AckRefused as refused:
            if refused.code in _UNANSWERABLE:
                interaction.extras["unanswerable"] = str(refused)
            else:
                log.warning("interaction %s: early acknowledgement refused: %s", interaction.id, refused)
            return
        if deferral is not None:
            interaction.extras["deferral"] = deferral
            interaction.extras["public_thinking"] = True

    async def say(self, interaction: discord.Interaction, text: str) -> None:
        """Something only this user sees, whatever state the interaction is in."""
        await self._adopt_early_ack(interaction)  # when an error came before the command ran
        try:
            if not interaction.response.is_done():
                await interaction.response.send_message(text, ephemeral=True)
            elif interaction.extras.get("public_thinking"):
                # The public "thinking…" message can't turn private: settle it, say it privately, remove it.
                await interaction.edit_original_response(content="…")
                await interaction.followup.send(text, ephemeral=True)
                with contextlib.suppress(discord.HTTPException):
                    await interaction.delete_original_response()
            else:
                await interaction.followup.send(text, ephemeral=True)
        except Exception as error:  # the last resort of every handler: it must not raise
            log.warning("interaction %s: could not tell the user: %r", interaction.id, error)

    @contextlib.asynccontextmanager
    async def _answering(self, interaction: discord.Interaction) -> AsyncIterator[None]:
        await self._adopt_early_ack(interaction)
        try:
            async with self._working:
                yield
        except _Unanswerable as reason:
            log.info("interaction %s not answered: %s", interaction.id, reason)
        except BotError as error:
            await self.say(interaction, error.user_message)
        except Exception:
            log.exception("interaction %s failed", interaction.id)
            await self.say(interaction, GENERIC_ERROR)
