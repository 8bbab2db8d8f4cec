"""The generation service: what front ends call to ask for images and to act on them (cancel, delete, history,
the originals). It knows nothing of Discord or Telegram."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from bot.core import accounts, credits, generations, input_images, queue
from bot.core.catalogue import ModelSpec
from bot.core.credits import AcceptOutcome, CreditPolicy
from bot.core.database import Connection
from bot.core.database_errors import CONNECTION_ERRORS, translates_connection_errors
from bot.core.errors import (
    BotError,
    Forbidden,
    ImagesUnavailable,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    TooBusy,
)
from bot.core.events import JobObserver
from bot.core.ids import is_valid_id, new_id
from bot.core.input_images import CheckedImage, UploadedImage
from bot.core.metrics import CREDITS_RESERVED
from bot.core.models import (
    Accepted,
    Destination,
    Generation,
    GenerationKind,
    GenerationStatus,
    HistoryItem,
    HistoryPage,
    ImageFile,
    ImageRecord,
    ImagineRequest,
    InputRecord,
    ModelPrice,
    Request,
    UserIdentity,
)
from bot.core.prompt import MAX_SEED, random_seed, validate_request
from bot.core.providers.runner import warnings_for
from bot.core.storage.base import ImageStore, StorageError

log = logging.getLogger(__name__)

MAX_HISTORY_PAGE_SIZE = 10
INPUT_NOT_SAVED_MESSAGE = "Your picture couldn't be saved just now. Nothing was charged; please try again."


class JobControl(Protocol):
    """What the service needs of the jobs side (bot.core.jobs.worker.Worker)."""

    def wake(self) -> None: ...

    def announcing(self, generation_id: str) -> None: ...

    def announced(self, generation_id: str, message_id: str | None) -> None: ...

    async def cancel(self, generation_id: str) -> bool: ...

    async def wait_for_records(self, ids: Sequence[str] = (), owner: UserIdentity | None = None) -> None: ...

    async def load_files(self, records: Sequence[ImageRecord]) -> list[ImageFile]: ...


@dataclass(frozen=True)
class RequestPolicy:
    prompt_max_chars: int
    banned_words: tuple[str, ...]
    per_user_queued_limit: int  # unfinished jobs one user may have
    requests_per_minute: int  # new requests one user may make per minute


class GenerationService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        jobs: JobControl,
        models: Mapping[str, ModelSpec],
        default_model: str,
        credit_policy: CreditPolicy,
        observers: Mapping[str, JobObserver],
        request_policy: RequestPolicy,
        store: ImageStore | None = None,  # where pictures users bring are kept; None: edits are refused
    ) -> None:
        self.store = store
        self.pool = pool
        self.jobs = jobs
        self.models = dict(models)
        self.default_model = default_model
        self.credit_policy = credit_policy
        self.observers = observers
        self.request_policy = request_policy

    # --- asking for images ---------------------------------------------------------------------

    @translates_connection_errors
    async def imagine(
        self,
        who: UserIdentity,
        request: ImagineRequest,
        destination: Destination,
        idempotency_key: str | None = None,
        inputs: Sequence[UploadedImage] = (),
    ) -> Accepted:
        """A new generation; with `inputs`, an edit of those pictures (checked, stripped and stored first)."""
        policy = self.request_policy
        valid = validate_request(
            request, self.models, self.default_model, policy.prompt_max_chars, policy.banned_words
        )
        if inputs:
            return await self._edit(who, valid, destination, idempotency_key, inputs)
        warnings = warnings_for(
            self.models[valid.model], seed_given=request.seed is not None, negative=bool(valid.negative_prompt),
            variation=False,
        )
        new = self._new_generation(
            who, valid, GenerationKind.IMAGINE, None, None, warnings, destination, idempotency_key
        )
        return await self._accept(new)

    @translates_connection_errors
    async def regenerate(
        self, who: UserIdentity, generation_id: str, destination: Destination, idempotency_key: str | None = None
    ) -> Accepted:
        """Same parameters, a new seed: a new charged generation linked to its parent."""
        parent = await self.visible_generation(who, generation_id, destination.chat_id)
        again = self._replay(parent, random_seed())
        new = self._new_generation(
            who, again, GenerationKind.REGENERATE, parent.id, None, (), destination, idempotency_key
        )
        # An edit again starts from the same pictures: the same stored files, recorded for the new one.
        async with self.pool.acquire() as conn:
            inputs = (await generations.get_inputs(conn, [parent.id]))[parent.id]
        return await self._accept(new, [dataclasses.replace(i, id=new_id(), generation_id=new.id) for i in inputs])

    @translates_connection_errors
    async def remix(
        self,
        who: UserIdentity,
        image_id: str,
        prompt: str,
        destination: Destination,
        idempotency_key: str | None = None,
    ) -> Accepted:
        """A new generation starting from one result image, with a new prompt; charged like any request."""
        image, parent = await self._remixable(who, image_id, destination.chat_id)
        policy = self.request_policy
        asked = ImagineRequest(
            prompt=prompt, negative_prompt=parent.negative_prompt, model=parent.model,
            aspect_ratio=parent.aspect_ratio, count=parent.count,
        )
        valid = validate_request(asked, self.models, self.default_model, policy.prompt_max_chars, policy.banned_words)
        new = self._new_generation(
            who, valid, GenerationKind.REMIX, parent.id, image.id, (), destination, idempotency_key
        )
        return await self._accept(new)

    @translates_connection_errors
    async def remix_source(self, who: UserIdentity, image_id: str, chat_id: str) -> Generation:
        """The generation an image belongs to, if the caller may see it: its prompt prefills a remix. A
        model that can't start from a picture is refused here, before the user types a new prompt."""
        _, source = await self._remixable(who, image_id, chat_id)
        return source

    async def _remixable(self, who: UserIdentity, image_id: str, chat_id: str) -> tuple[ImageRecord, Generation]:
        image = await self._visible_image(who, image_id, chat_id)
        source = await self.visible_generation(who, image.generation_id, chat_id)
        self._replay(source, source.seed)  # refuses a model that is gone
        input_images.refuse_unless_model_takes(self.models[source.model], 1, list(self.models.values()))
        return image, source

    def refuse_edit_unless_possible(self, request: ImagineRequest, count: int) -> None:
        """Before a front end downloads anything: the model asked for (or the default) must take this many
        pictures. An unknown model is left for validation to name."""
        name = (request.model or self.default_model).strip()
        model = self.models.get(name) or self.models.get(name.lower())
        if model is not None:
            input_images.refuse_unless_model_takes(model, count, list(self.models.values()))

    async def _edit(
        self,
        who: UserIdentity,
        valid: Request,
        destination: Destination,
        idempotency_key: str | None,
        uploads: Sequence[UploadedImage],
    ) -> Accepted:
        input_images.refuse_unless_model_takes(self.models[valid.model], len(uploads), list(self.models.values()))
        if self.store is None:
            raise InvalidRequest("Pictures can't be used with this bot.")
        checked = await input_images.check_all(uploads)
        warnings = warnings_for(
            self.models[valid.model], seed_given=False, negative=bool(valid.negative_prompt), variation=False
        )
        new = self._new_generation(
            who, valid, GenerationKind.IMAGINE, None, None, warnings, destination, idempotency_key
        )
        records = await self._keep_inputs(new.id, checked)
        try:
            accepted = await self._accept(new, records)
        except Exception:
            await self._forget_unused_inputs(records)
            raise
        if accepted.duplicate:
            await self._forget_unused_inputs(records)
        return accepted

    async def _keep_inputs(self, generation_id: str, checked: Sequence[CheckedImage]) -> list[InputRecord]:
        assert self.store is not None
        records: list[InputRecord] = []
        for index, image in enumerate(checked):
            try:
                await self.store.put(image.storage_key, image.data, image.mime_type)
            except StorageError as error:
                log.warning("an uploaded picture could not be stored: %s", error)
                await self._forget_unused_inputs(records)
                raise BotError(INPUT_NOT_SAVED_MESSAGE) from error
            records.append(InputRecord(
                id=new_id(), generation_id=generation_id, index=index, storage_key=image.storage_key,
                sha256=image.sha256, mime_type=image.mime_type, width=image.width, height=image.height,
                bytes=len(image.data),
            ))
        return records

    async def _forget_unused_inputs(self, records: Sequence[InputRecord]) -> None:
        """A refused request keeps nothing: its files go, unless another generation records the same one."""
        if not records or self.store is None:
            return
        try:
            async with self.pool.acquire() as conn:
                unused = await generations.unused_input_keys(conn, [r.storage_key for r in records])
            for key in unused:
                await self.store.delete(key)
        except (StorageError, *CONNECTION_ERRORS):
            log.warning("could not remove a refused request's pictures", exc_info=True)

    @translates_connection_errors
    async def vary(
        self, who: UserIdentity, image_id: str, destination: Destination, idempotency_key: str | None = None
    ) -> Accepted:
        """A new generation conditioned on one image (or, for models without image input, the same prompt
        with a seed derived from the image's)."""
        image = await self._visible_image(who, image_id, destination.chat_id)
        parent = await self.visible_generation(who, image.generation_id, destination.chat_id)
        varied = self._replay(parent, _derived_seed(image.seed if image.seed is not None else parent.seed))
        warnings = warnings_for(self.models[varied.model], seed_given=False, negative=False, variation=True)
        new = self._new_generation(
            who, varied, GenerationKind.VARIATION, parent.id, image.id, warnings, destination, idempotency_key
        )
        return await self._accept(new)

    def _replay(self, parent: Generation, seed: int) -> Request:
        if parent.model not in self.models:
            raise InvalidRequest(f"The model {parent.model} is no longer available. Try /imagine with another model.")
        return dataclasses.replace(parent.only_request(), seed=seed)

    def _new_generation(
        self,
        who: UserIdentity,
        request: Request,
        kind: GenerationKind,
        parent_generation_id: str | None,
        parent_image_id: str | None,
        warnings: Sequence[str],
        destination: Destination,
        idempotency_key: str | None,
    ) -> generations.NewGeneration:
        return generations.NewGeneration(
            id=new_id(),
            owner=who,
            request=request,
            kind=kind,
            parent_generation_id=parent_generation_id,
            parent_image_id=parent_image_id,
            warnings=tuple(warnings),
            cost=self.credit_policy.cost(self.models[request.model], request.count),
            idempotency_key=f"{who.platform}:{idempotency_key}" if idempotency_key else None,
            destination=destination,
        )

    async def _accept(self, new: generations.NewGeneration, inputs: Sequence[InputRecord] = ()) -> Accepted:
        policy = self.request_policy
        acceptance: credits.Acceptance | None = None
        try:
            async with self.pool.acquire() as conn, (conn.transaction() if inputs else contextlib.nullcontext()):
                acceptance = await credits.accept(
                    conn, new, self.credit_policy.welcome, policy.per_user_queued_limit, policy.requests_per_minute
                )
                if inputs and acceptance.outcome == AcceptOutcome.ACCEPTED:
                    # With the job, atomically: the worker never sees an edit without its pictures.
                    await generations.add_inputs(conn, inputs)
                if acceptance.outcome == AcceptOutcome.DUPLICATE:
                    assert acceptance.existing is not None
                    existing = await generations.get_generation(conn, acceptance.existing)
                    assert existing is not None
                    return await self._duplicate(conn, existing, acceptance.user_id)
        except CONNECTION_ERRORS:
            if acceptance is None or acceptance.generation is None:
                raise
            # Committed, then the connection went while it was handed back: the request stands.
            log.warning("connection lost after accepting a request; it stands")
        assert acceptance is not None
        self._refuse_unless_accepted(acceptance, new.cost)
        generation = acceptance.generation
        assert generation is not None
        CREDITS_RESERVED.inc(new.cost)
        who = new.owner
        log.info("job %s accepted: %s by %s:%s, cost %d", generation.id, new.kind, who.platform, who.platform_user_id,
                 new.cost)
        self.jobs.announcing(generation.id)
        self.jobs.wake()
        await self._announce(generation, acceptance.ahead)
        return Accepted(generation, acceptance.ahead, acceptance.balance if self.credit_policy.enabled else None)

    def _refuse_unless_accepted(self, acceptance: credits.Acceptance, cost: int) -> None:
        """A refused request says why, in plain words; nothing was written for it."""
        if acceptance.outcome == AcceptOutcome.TOO_BUSY:
            raise TooBusy(
                f"You already have {acceptance.active} generations waiting. "
                "Please wait for them to finish, or cancel one."
            )
        if acceptance.outcome == AcceptOutcome.TOO_FAST:
            raise TooBusy(f"You're making requests very fast. Please try again in {acceptance.retry_in} seconds.")
        if acceptance.outcome == AcceptOutcome.INSUFFICIENT:
            raise InsufficientCredits(balance=acceptance.balance, cost=cost)

    async def _duplicate(self, conn: Connection, existing: Generation, user_id: int) -> Accepted:
        position = await queue.queue_position(conn, existing.id) if existing.status == GenerationStatus.QUEUED else 0
        balance = await credits.balance(conn, user_id)
        return Accepted(existing, position, balance if self.credit_policy.enabled else None, duplicate=True)

    async def _announce(self, generation: Generation, position: int) -> None:
        """Post the status message and store its id; the job's result waits for both (see announcements)."""
        message_id: str | None = None
        try:
            observer = self.observers.get(generation.destination.platform)
            if observer is None:
                return
            try:
                message_id = await observer.on_queued(generation, position)
            except Exception:
                log.warning("job %s: queued notification failed", generation.id, exc_info=True)
                return
            if message_id is not None:
                async with self.pool.acquire() as conn:
                    await generations.set_message(conn, generation.id, message_id, None)
        finally:
            self.jobs.announced(generation.id, message_id)

    # --- acting on a generation ----------------------------------------------------------------

    @translates_connection_errors
    async def cancel(self, who: UserIdentity, generation_id: str, chat_id: str) -> Generation:
        """Only the owner may cancel. Refunds everything (nothing was delivered)."""
        generation = await self._owned(who, generation_id, chat_id)
        if not await self.jobs.cancel(generation.id):
            raise InvalidRequest("That generation has already finished, so it can't be cancelled.")
        return await self._reload(generation.id)

    @translates_connection_errors
    async def delete(self, who: UserIdentity, generation_id: str, chat_id: str) -> None:
        """Only the owner may delete: the generation leaves their history and its buttons stop working."""
        generation = await self._owned(who, generation_id, chat_id)
        if not generation.is_finished:
            raise InvalidRequest("That generation is still running. Cancel it first.")
        async with self.pool.acquire() as conn:
            await generations.mark_deleted(conn, generation.id)

    @translates_connection_errors
    async def attach_message(self, generation_id: str, message_id: str, context: dict[str, Any] | None = None) -> None:
        """Remember where a front end showed a job (to edit it later)."""
        async with self.pool.acquire() as conn:
            await generations.set_message(conn, generation_id, message_id, context)

    # --- reading -------------------------------------------------------------------------------

    @translates_connection_errors
    async def history(self, who: UserIdentity, page: int = 0, page_size: int = 5) -> HistoryPage:
        """The caller's own generations (their account's, from every linked platform), newest first. Nobody
        else's, ever."""
        page_size = max(1, min(page_size, MAX_HISTORY_PAGE_SIZE))
        page = max(0, page)
        await self.jobs.wait_for_records(owner=who)
        async with self.pool.acquire() as conn:
            user = await credits.find_user(conn, who.platform, who.platform_user_id)
            if user is None:
                return HistoryPage((), 0, page_size, 0)
            rows, total = await generations.history(conn, user.account_id, page * page_size, page_size)
            if not rows and total and page > 0:
                # Asked past the end (an old button): show the last page instead.
                page = (total - 1) // page_size
                rows, total = await generations.history(conn, user.account_id, page * page_size, page_size)
            images = await generations.get_images(conn, [g.id for g in rows])
            inputs = await generations.get_inputs(conn, [g.id for g in rows])
        items = tuple(HistoryItem(g, tuple(images[g.id]), tuple(inputs[g.id])) for g in rows)
        return HistoryPage(items, page, page_size, total)

    @translates_connection_errors
    async def generation(self, who: UserIdentity, generation_id: str, chat_id: str) -> HistoryItem:
        """One generation with its images, if the caller may see it."""
        generation = await self.visible_generation(who, generation_id, chat_id)
        async with self.pool.acquire() as conn:
            images = await generations.get_images(conn, [generation.id])
            inputs = await generations.get_inputs(conn, [generation.id])
        return HistoryItem(generation, tuple(images[generation.id]), tuple(inputs[generation.id]))

    @translates_connection_errors
    async def load_files(self, images: Sequence[ImageRecord]) -> list[ImageFile]:
        """The images' files, from the store; ImagesUnavailable if any cannot be read."""
        try:
            return await self.jobs.load_files(images)
        except StorageError as error:
            log.warning("image files unavailable: %s", error)
            raise ImagesUnavailable() from error

    @translates_connection_errors
    async def record_file_ref(self, image_id: str, platform: str, ref: str) -> None:
        """Remember a platform's handle for an uploaded image (a Telegram file_id) so it is never uploaded twice."""
        async with self.pool.acquire() as conn:
            await generations.set_file_refs(conn, platform, {image_id: ref})

    def model_choices(self) -> list[ModelPrice]:
        return [ModelPrice(m.name, m.label or m.name, m.cost) for m in self.models.values()]

    # --- visibility ----------------------------------------------------------------------------

    @translates_connection_errors
    async def visible_generation(self, who: UserIdentity, generation_id: str, chat_id: str) -> Generation:
        """A generation the caller may see: their own, or one posted in the chat they are acting from.
        Anything else looks exactly like a missing one."""
        if not is_valid_id(generation_id):
            raise NotFound()
        await self.jobs.wait_for_records([generation_id])
        async with self.pool.acquire() as conn:
            generation = await generations.get_generation(conn, generation_id)
        if generation is None:
            raise NotFound()
        same_chat = generation.destination.platform == who.platform and generation.destination.chat_id == chat_id
        if not (same_chat or await self._is_own(who, generation)):
            raise NotFound()
        return generation

    async def _is_own(self, who: UserIdentity, generation: Generation) -> bool:
        """The caller's own: asked for by them, or by another identity of their account (a linked platform)."""
        if generation.owner.platform == who.platform and generation.owner.platform_user_id == who.platform_user_id:
            return True
        async with self.pool.acquire() as conn:
            return await accounts.same_account(conn, generation.user_id, who.platform, who.platform_user_id)

    async def _visible_image(self, who: UserIdentity, image_id: str, chat_id: str) -> ImageRecord:
        if not is_valid_id(image_id):
            raise NotFound("That image")
        await self.jobs.wait_for_records([image_id])
        async with self.pool.acquire() as conn:
            image = await generations.get_image(conn, image_id)
        if image is None:
            raise NotFound("That image")
        await self.visible_generation(who, image.generation_id, chat_id)
        return image

    async def _owned(self, who: UserIdentity, generation_id: str, chat_id: str) -> Generation:
        generation = await self.visible_generation(who, generation_id, chat_id)
        if not await self._is_own(who, generation):
            raise Forbidden("Only the person who asked for these images can do that.")
        return generation

    async def _reload(self, generation_id: str) -> Generation:
        async with self.pool.acquire() as conn:
            generation = await generations.get_generation(conn, generation_id)
        assert generation is not None
        return generation


def _derived_seed(seed: int) -> int:
    """A fresh seed derived from the parent's, different on every press."""
    digest = hashlib.sha256(f"{seed}:{secrets.token_hex(4)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (MAX_SEED + 1)
