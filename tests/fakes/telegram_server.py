"""A fake Telegram Bot API server on 127.0.0.1, for driving the real python-telegram-bot in tests.

It speaks the Bot API's wire format: requests as form fields or multipart (files), JSON-encoded complex
values, answers {"ok": true, "result": ...} or {"ok": false, "error_code": ..., "description": ...,
"parameters": ...}. It keeps a small world (users, chats, messages, file_ids) so that it refuses what
Telegram refuses: unknown file_ids, replies to deleted messages, messages to users who never started the
bot or blocked it, callback_data over 64 bytes, captions over 1024 characters, photos over the size limit.

Tests play the users: `send(user, chat, "/imagine …")` and `press(user, message, data)` queue updates that
getUpdates serves (long polling, offsets as Telegram does). Every call is recorded (`calls`), errors can be
scripted (`fail`), and calls slowed down (`delay`)."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_request import FileField
from PIL import Image

BOT_ID = 123
BOT_USERNAME = "ImageTestBot"
BOT_USER = {
    "id": BOT_ID,
    "is_bot": True,
    "first_name": "Image Bot",
    "username": BOT_USERNAME,
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
DEFAULT_TOKEN = f"{BOT_ID}:TEST-token_abcdefghijklmnop"

PHOTO_MAX_BYTES = 10 * 1024 * 1024
DOWNLOAD_MAX_BYTES = 20 * 1024 * 1024  # getFile on the public Bot API
UPLOAD_MAX_BYTES = 50 * 1024 * 1024
CAPTION_LIMIT = 1024
TEXT_LIMIT = 4096

# Parameters whose value is text as sent, never JSON (a prompt "123" must stay a string).
_TEXT_PARAMS = {
    "text", "caption", "callback_query_id", "action", "url", "secret_token", "photo", "document", "data",
    "parse_mode", "filename", "inline_message_id", "business_connection_id", "emoji",
    "title", "description", "payload", "provider_token", "currency", "pre_checkout_query_id", "error_message",
    "telegram_payment_charge_id",
}


@dataclass(frozen=True)
class Upload:
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class ApiCall:
    method: str
    params: dict[str, Any]
    files: dict[str, Upload]
    started: float
    finished: float = 0.0
    ok: bool = False
    result: Any = None
    error: dict[str, Any] | None = None

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return int(value) if isinstance(value, int | str) and str(value).lstrip("-").isdigit() else None

    def callback_data(self) -> list[str]:
        markup = self.params.get("reply_markup") or {}
        return [b["callback_data"] for row in markup.get("inline_keyboard", []) for b in row if "callback_data" in b]

    def button_texts(self) -> list[str]:
        markup = self.params.get("reply_markup") or {}
        return [b["text"] for row in markup.get("inline_keyboard", []) for b in row]


class ApiError(Exception):
    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


# Errors as Telegram words them.
def too_many_requests(retry_after: int = 1) -> ApiError:
    return ApiError(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})


def blocked_by_user() -> ApiError:
    return ApiError(403, "Forbidden: bot was blocked by the user")


def cannot_initiate() -> ApiError:
    return ApiError(403, "Forbidden: bot can't initiate conversation with a user")


def chat_not_found() -> ApiError:
    return ApiError(400, "Bad Request: chat not found")


def bad_request(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


def server_error() -> ApiError:
    return ApiError(500, "Internal Server Error")


@dataclass
class _Scripted:
    method: str
    error: ApiError
    chat_id: int | None
    times: int
    where: Callable[[ApiCall], bool] | None


@dataclass
class FakeTelegram:
    token: str = DEFAULT_TOKEN
    photo_max_bytes: int = PHOTO_MAX_BYTES
    calls: list[ApiCall] = field(default_factory=list)
    base_url: str = ""  # PTB's base_url: ends in /bot, the token follows
    base_file_url: str = ""
    webhook: dict[str, Any] | None = None
    commands: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.users: dict[int, dict[str, Any]] = {}
        self.started: set[int] = set()  # users with a private chat open with the bot
        self.blocked: set[int] = set()
        self.groups: dict[int, dict[str, Any]] = {}
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self.file_paths: dict[str, str] = {}  # getFile's file_path -> file_id
        self.downloads: list[str] = []  # file_paths the bot downloaded
        self.queries: dict[str, bool] = {}  # callback query id -> answered
        # Payments: pre-checkout query id -> (pushed at, answer call or None); charge id -> (user, refunded).
        self.checkouts: dict[str, tuple[float, ApiCall | None]] = {}
        self.charges: dict[str, tuple[int, bool]] = {}
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._update_ids = itertools.count(10_000)
        self._updates: list[dict[str, Any]] = []
        self._new_update = asyncio.Event()
        self._script: list[_Scripted] = []
        self._delays: dict[tuple[str, int | None], float] = {}
        self._in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}

    # --- the world, as tests see it ------------------------------------------------------------

    def user(self, user_id: int, first_name: str = "Ann", username: str | None = None) -> dict[str, Any]:
        user = {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"}
        if username:
            user["username"] = username
        self.users[user_id] = user
        return user

    def private_chat(self, user: dict[str, Any]) -> dict[str, Any]:
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        if "username" in user:
            chat["username"] = user["username"]
        return chat

    def group(self, chat_id: int = -1001234567890, title: str = "Artists") -> dict[str, Any]:
        chat = {"id": chat_id, "type": "supergroup", "title": title}
        self.groups[chat_id] = chat
        return chat

    def block(self, user_id: int) -> None:
        self.blocked.add(user_id)

    def delete(self, chat_id: int, message_id: int) -> None:
        """The user deleted a message."""
        self.messages.pop((chat_id, message_id), None)

    def message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        return self.messages[(chat_id, message_id)]

    # --- updates ---------------------------------------------------------------------------------

    def send(self, user: dict[str, Any], text: str, chat: dict[str, Any] | None = None,
             reply_to: dict[str, Any] | None = None) -> dict[str, Any]:
        """The user sends `text` (in their private chat unless `chat` is given). Returns the update."""
        update = self.message_update(user, text, chat, reply_to)
        self.push(update)
        return update

    def message_update(self, user: dict[str, Any], text: str, chat: dict[str, Any] | None = None,
                       reply_to: dict[str, Any] | None = None) -> dict[str, Any]:
        chat = chat or self.private_chat(user)
        if chat["type"] == "private":
            self.started.add(user["id"])  # writing to the bot opens the chat
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat["id"]),
            "from": user,
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": _utf16_len(command)}]
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        self.messages[(chat["id"], message["message_id"])] = message
        return {"update_id": next(self._update_ids), "message": message}

    def send_photo(
        self, user: dict[str, Any], data: bytes, caption: str | None = None, chat: dict[str, Any] | None = None,
        *, reply_to: dict[str, Any] | None = None, media_group_id: str | None = None,
        document: tuple[str, str] | None = None, declared_size: int | None = None,
    ) -> dict[str, Any]:
        """The user sends a picture: a photo (in sizes, as Telegram makes them), or with `document`
        (file name, MIME type) as a file. `declared_size` is the size Telegram reports, if not the real one."""
        update = self.message_update(user, caption or "", chat, reply_to)
        message = update["message"]
        del message["text"]
        message.pop("entities", None)
        if caption:
            message["caption"] = caption
            if caption.startswith("/"):
                command = caption.split()[0]
                message["caption_entities"] = [{"type": "bot_command", "offset": 0, "length": _utf16_len(command)}]
        if media_group_id:
            message["media_group_id"] = media_group_id
        if document is not None:
            file_id = f"BQAC{secrets.token_urlsafe(24)}"
            self.files[file_id] = data
            message["document"] = {
                "file_id": file_id, "file_unique_id": file_id[-12:], "file_name": document[0],
                "mime_type": document[1], "file_size": declared_size or len(data),
            }
        else:
            message["photo"] = self._photo(None, Upload("photo.jpg", "image/jpeg", data), ignore_limit=True)
            if declared_size is not None:
                message["photo"][-1]["file_size"] = declared_size
        self.push(update)
        return update

    def press(self, user: dict[str, Any], message: dict[str, Any], data: str) -> str:
        """The user presses an inline button with `data` on the bot's `message`. Returns the query id."""
        update = self.press_update(user, message, data)
        self.push(update)
        return str(update["callback_query"]["id"])

    def press_update(self, user: dict[str, Any], message: dict[str, Any], data: str) -> dict[str, Any]:
        """The update of a button press, not queued (for a webhook: the test posts it)."""
        query_id = str(secrets.randbits(63))
        self.queries[query_id] = False
        current = self.messages.get((message["chat"]["id"], message["message_id"]), message)
        return {
            "update_id": next(self._update_ids),
            "callback_query": {
                "id": query_id, "from": user, "message": current, "chat_instance": "-4242", "data": data,
            },
        }

    def pre_checkout(self, user: dict[str, Any], payload: str, total: int, currency: str = "XTR") -> str:
        """The user pressed Pay on an invoice: Telegram asks the bot to confirm. Returns the query id."""
        query_id = str(secrets.randbits(63))
        self.checkouts[query_id] = (time.monotonic(), None)
        self.push({
            "update_id": next(self._update_ids),
            "pre_checkout_query": {
                "id": query_id, "from": user, "currency": currency, "total_amount": total, "invoice_payload": payload,
            },
        })
        return query_id

    def checkout_answer(self, query_id: str) -> ApiCall | None:
        return self.checkouts[query_id][1]

    def payment_update(
        self, user: dict[str, Any], payload: str, total: int, charge_id: str | None = None, currency: str = "XTR"
    ) -> dict[str, Any]:
        """The payment went through: a service message with successful_payment (push it to deliver it;
        pushing it twice is Telegram delivering it twice)."""
        charge_id = charge_id or f"stxch_{secrets.token_hex(12)}"
        self.charges[charge_id] = (user["id"], False)
        self.started.add(user["id"])  # paying happens in a chat with the bot
        chat = self.private_chat(user)
        message = {
            "message_id": self._next_message_id(chat["id"]), "from": user, "chat": chat, "date": int(time.time()),
            "successful_payment": {
                "currency": currency, "total_amount": total, "invoice_payload": payload,
                "telegram_payment_charge_id": charge_id, "provider_payment_charge_id": "",
            },
        }
        self.messages[(chat["id"], message["message_id"])] = message
        return {"update_id": next(self._update_ids), "message": message}

    def push(self, *updates: dict[str, Any]) -> None:
        """Queue updates as they are (pushing one twice is Telegram delivering it twice)."""
        self._updates.extend(updates)
        self._new_update.set()

    # --- scripting ---------------------------------------------------------------------------------

    def fail(
        self, method: str, error: ApiError, *, chat_id: int | None = None, times: int = 1,
        where: Callable[[ApiCall], bool] | None = None,
    ) -> None:
        """The next `times` calls of `method` (to `chat_id`, and matching `where`, if given) get `error`."""
        self._script.append(_Scripted(method, error, chat_id, times, where))

    def delay(self, method: str, seconds: float, *, chat_id: int | None = None) -> None:
        self._delays[(method, chat_id)] = seconds

    # --- what the bot did ------------------------------------------------------------------------

    def sent(self, method: str | None = None, chat_id: int | None = None, ok: bool = True) -> list[ApiCall]:
        return [
            call for call in self.calls
            if (method is None or call.method == method)
            and (chat_id is None or call.chat_id == chat_id)
            and call.ok == ok
            and call.finished
        ]

    async def wait_sent(
        self, method: str, chat_id: int | None = None, count: int = 1, within: float = 10.0,
        where: Callable[[ApiCall], bool] | None = None,
    ) -> list[ApiCall]:
        """Wait until at least `count` successful `method` calls (matching `where`) were answered."""
        deadline = time.monotonic() + within
        while True:
            found = [c for c in self.sent(method, chat_id) if where is None or where(c)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                seen = [(c.method, c.chat_id, c.ok) for c in self.calls]
                raise AssertionError(f"expected {count} × {method} to {chat_id}; calls: {seen}")
            await asyncio.sleep(0.01)

    def all_callback_data(self) -> list[str]:
        return [data for call in self.calls for data in call.callback_data()]

    # --- the HTTP side -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=UPLOAD_MAX_BYTES + 10 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        return app

    async def _download(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        if request.match_info["token"] != self.token or path not in self.file_paths:
            return web.Response(status=404)
        self.downloads.append(path)
        return web.Response(body=self.files[self.file_paths[path]], content_type="application/octet-stream")

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        if request.content_length and request.content_length > UPLOAD_MAX_BYTES:
            error = ApiError(413, "Request Entity Too Large")
            return web.json_response(error.body(), status=413)
        params, files = await _read_params(request)
        call = ApiCall(method, params, files, started=time.monotonic())
        self.calls.append(call)
        self._in_flight[method] = self._in_flight.get(method, 0) + 1
        self.max_in_flight[method] = max(self.max_in_flight.get(method, 0), self._in_flight[method])
        try:
            delay = self._delays.get((method, call.chat_id), self._delays.get((method, None), 0.0))
            if delay:
                await asyncio.sleep(delay)
            try:
                self._scripted_error(call)
                handler = getattr(self, f"_api_{method}", None)
                if handler is None:
                    raise ApiError(404, "Not Found")
                result = await handler(call) if asyncio.iscoroutinefunction(handler) else handler(call)
            except ApiError as error:
                call.error = error.body()
                return web.json_response(error.body(), status=error.code)
            call.ok, call.result = True, result
            return web.json_response({"ok": True, "result": result})
        finally:
            call.finished = time.monotonic()
            self._in_flight[method] -= 1

    def _scripted_error(self, call: ApiCall) -> None:
        for scripted in self._script:
            if (
                scripted.method == call.method
                and scripted.chat_id in (None, call.chat_id)
                and (scripted.where is None or scripted.where(call))
            ):
                scripted.times -= 1
                if scripted.times <= 0:
                    self._script.remove(scripted)
                raise scripted.error

    # --- Bot API methods ---------------------------------------------------------------------------

    def _api_getMe(self, call: ApiCall) -> dict[str, Any]:
        return BOT_USER

    def _api_deleteWebhook(self, call: ApiCall) -> bool:
        self.webhook = None
        if call.params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    def _api_setWebhook(self, call: ApiCall) -> bool:
        url = call.params.get("url", "")
        if url and not url.startswith("https://"):
            raise bad_request("bad webhook: HTTPS url must be provided for webhook")
        secret = call.params.get("secret_token")
        if secret is not None and not (1 <= len(secret) <= 256 and all(c.isalnum() or c in "_-" for c in secret)):
            raise bad_request("secret token contains unallowed characters")
        self.webhook = dict(call.params) if url else None
        return True

    def _api_setMyCommands(self, call: ApiCall) -> bool:
        scope = call.params.get("scope") or {"type": "default"}
        if scope.get("type") == "chat":
            self._chat(scope.get("chat_id"))
        for command in call.params.get("commands", []):
            name = command.get("command", "")
            if not (1 <= len(name) <= 32 and name.islower() and name.replace("_", "").isalnum()):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(command.get("description", "")) <= 256:
                raise bad_request("command description is empty or too long")
        self.commands[json.dumps(scope, sort_keys=True)] = call.params.get("commands", [])
        return True

    async def _api_getUpdates(self, call: ApiCall) -> list[dict[str, Any]]:
        offset = call.params.get("offset")
        timeout = float(call.params.get("timeout") or 0)
        limit = int(call.params.get("limit") or 100)
        if self.webhook is not None:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                                "use deleteWebhook to delete the webhook first")
        deadline = time.monotonic() + timeout
        while True:
            if offset:
                # An offset confirms every update before it: Telegram forgets them.
                self._updates = [u for u in self._updates if u["update_id"] >= int(offset)]
            if self._updates:
                return self._updates[:limit]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), remaining)
            except TimeoutError:
                return []

    def _api_sendMessage(self, call: ApiCall) -> dict[str, Any]:
        chat = self._writable_chat(call.params.get("chat_id"))
        text = call.params.get("text") or ""
        if not text.strip():
            raise bad_request("message text is empty")
        if _utf16_len(text) > TEXT_LIMIT:
            raise bad_request("message is too long")
        message = self._new_bot_message(chat, call)
        message["text"] = text
        return self._store(message)

    def _api_sendPhoto(self, call: ApiCall) -> dict[str, Any]:
        chat = self._writable_chat(call.params.get("chat_id"))
        self._check_caption(call.params.get("caption"))
        sizes = self._photo(call.params.get("photo"), call.files.get("photo"))
        message = self._new_bot_message(chat, call)
        message["photo"] = sizes
        if call.params.get("caption"):
            message["caption"] = call.params["caption"]
        return self._store(message)

    def _api_sendDocument(self, call: ApiCall) -> dict[str, Any]:
        chat = self._writable_chat(call.params.get("chat_id"))
        self._check_caption(call.params.get("caption"))
        document = self._document(call.params.get("document"), call.files.get("document"))
        message = self._new_bot_message(chat, call)
        message["document"] = document
        return self._store(message)

    def _api_sendMediaGroup(self, call: ApiCall) -> list[dict[str, Any]]:
        chat = self._writable_chat(call.params.get("chat_id"))
        media = call.params.get("media")
        if not isinstance(media, list) or not 2 <= len(media) <= 10:
            raise bad_request("wrong number of media in the album: it must be 2-10")
        kinds = {item.get("type") for item in media}
        if len(kinds) != 1 or not kinds <= {"photo", "document"}:
            raise bad_request("documents can't be mixed with other media types")
        if "reply_markup" in call.params:
            raise bad_request("media groups can't have a reply markup")  # the real API has no such field
        group_id = str(secrets.randbits(60))
        messages = []
        reply = self._reply(chat, call)
        for item in media:
            self._check_caption(item.get("caption"))
            ref = item.get("media", "")
            upload = call.files.get(ref.removeprefix("attach://")) if ref.startswith("attach://") else None
            message = {
                "message_id": self._next_message_id(chat["id"]), "from": BOT_USER, "chat": chat,
                "date": int(time.time()), "media_group_id": group_id,
            }
            if reply is not None:
                message["reply_to_message"] = reply
            if item["type"] == "photo":
                message["photo"] = self._photo(None if upload else ref, upload)
            else:
                message["document"] = self._document(None if upload else ref, upload)
            if item.get("caption"):
                message["caption"] = item["caption"]
            messages.append(self._store(message))
        return messages

    def _api_sendChatAction(self, call: ApiCall) -> bool:
        self._writable_chat(call.params.get("chat_id"))
        if call.params.get("action") not in {"typing", "upload_photo", "upload_document", "record_video",
                                             "upload_video", "record_voice", "upload_voice", "choose_sticker",
                                             "find_location", "record_video_note", "upload_video_note"}:
            raise bad_request("wrong parameter action in request")
        return True

    def _api_editMessageText(self, call: ApiCall) -> dict[str, Any]:
        message = self._own_message(call, "message to edit not found")
        text = call.params.get("text") or ""
        if "text" not in message:
            raise bad_request("there is no text in the message to edit")
        if _utf16_len(text) > TEXT_LIMIT:
            raise bad_request("MESSAGE_TOO_LONG")
        markup = call.params.get("reply_markup")
        self._check_markup(markup)
        if message["text"] == text and message.get("reply_markup") == (markup or None):
            raise bad_request("message is not modified: specified new message content and reply markup are "
                              "exactly the same as a current content and reply markup of the message")
        message["text"] = text
        _set_markup(message, markup)
        message["edit_date"] = int(time.time())
        return message

    def _api_editMessageReplyMarkup(self, call: ApiCall) -> dict[str, Any]:
        message = self._own_message(call, "message to edit not found")
        markup = call.params.get("reply_markup")
        self._check_markup(markup)
        if message.get("reply_markup") == (markup or None):
            raise bad_request("message is not modified: specified new message content and reply markup are "
                              "exactly the same as a current content and reply markup of the message")
        _set_markup(message, markup)
        return message

    def _api_editMessageMedia(self, call: ApiCall) -> dict[str, Any]:
        message = self._own_message(call, "message to edit not found")
        if "photo" not in message and "document" not in message:
            raise bad_request("there is no media in the message to edit")
        media = call.params.get("media") or {}
        ref = media.get("media", "")
        upload = call.files.get(ref.removeprefix("attach://")) if ref.startswith("attach://") else None
        message.pop("document", None)
        message["photo"] = self._photo(None if upload else ref, upload)
        if media.get("caption"):
            message["caption"] = media["caption"]
        return message

    def _api_deleteMessage(self, call: ApiCall) -> bool:
        key = (int(call.params.get("chat_id", 0)), int(call.params.get("message_id", 0)))
        if key not in self.messages:
            raise bad_request("message to delete not found")
        del self.messages[key]
        return True

    def _api_getFile(self, call: ApiCall) -> dict[str, Any]:
        file_id = call.params.get("file_id")
        if file_id not in self.files:
            raise bad_request("wrong file_id or the file is temporarily unavailable")
        data = self.files[file_id]
        if len(data) > DOWNLOAD_MAX_BYTES:
            raise bad_request("file is too big")
        path = f"files/{file_id[-12:]}"
        self.file_paths[path] = file_id
        return {"file_id": file_id, "file_unique_id": file_id[-12:], "file_size": len(data), "file_path": path}

    def _api_answerCallbackQuery(self, call: ApiCall) -> bool:
        query_id = call.params.get("callback_query_id")
        if query_id not in self.queries or self.queries[query_id]:
            raise bad_request("query is too old and response timeout expired or query ID is invalid")
        if len(call.params.get("text") or "") > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        self.queries[query_id] = True
        return True

    def _api_sendInvoice(self, call: ApiCall) -> dict[str, Any]:
        """As Telegram checks an invoice in Stars (digital goods may only be sold in Stars)."""
        chat = self._writable_chat(call.params.get("chat_id"))
        p = call.params
        if not 1 <= len(p.get("title") or "") <= 32:
            raise bad_request("INVOICE_TITLE_INVALID" if p.get("title") else "parameter title is required")
        if not 1 <= len(p.get("description") or "") <= 255:
            raise bad_request("INVOICE_DESCRIPTION_INVALID")
        if not 1 <= len((p.get("payload") or "").encode()) <= 128:
            raise bad_request("INVOICE_PAYLOAD_INVALID")
        if p.get("currency") != "XTR":
            raise bad_request("CURRENCY_INVALID")  # the fake sells only Stars
        if p.get("provider_token"):
            raise bad_request("PAYMENT_PROVIDER_INVALID")  # Stars take no provider token
        prices = p.get("prices")
        if not isinstance(prices, list) or len(prices) != 1:
            raise bad_request("STARS_INVOICE_INVALID: exactly one price must be specified")
        amount = prices[0].get("amount")
        if not isinstance(amount, int) or not 1 <= amount <= 10_000 or not prices[0].get("label"):
            raise bad_request("STARS_INVOICE_INVALID")
        message = self._new_bot_message(chat, call)
        message["invoice"] = {
            "title": p["title"], "description": p["description"], "start_parameter": "", "currency": "XTR",
            "total_amount": amount,
        }
        return self._store(message)

    def _api_answerPreCheckoutQuery(self, call: ApiCall) -> bool:
        query_id = call.params.get("pre_checkout_query_id")
        if query_id not in self.checkouts or self.checkouts[query_id][1] is not None:
            raise bad_request("query is too old and response timeout expired or query ID is invalid")
        pushed, _ = self.checkouts[query_id]
        if time.monotonic() - pushed > 10:
            raise bad_request("query is too old and response timeout expired or query ID is invalid")
        ok = call.params.get("ok")
        if ok not in (True, False):
            raise bad_request("parameter ok is required")
        if not ok and not call.params.get("error_message"):
            raise bad_request("error_message is required when ok is False")
        self.checkouts[query_id] = (pushed, call)
        return True

    def _api_refundStarPayment(self, call: ApiCall) -> bool:
        charge_id = call.params.get("telegram_payment_charge_id")
        if charge_id not in self.charges:
            raise bad_request("CHARGE_NOT_FOUND")
        user_id, refunded = self.charges[charge_id]
        if int(call.params.get("user_id", 0)) != user_id:
            raise bad_request("USER_ID_INVALID")
        if refunded:
            raise bad_request("CHARGE_ALREADY_REFUNDED")
        self.charges[charge_id] = (user_id, True)
        return True

    # --- helpers -----------------------------------------------------------------------------------

    def _next_message_id(self, chat_id: int) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(1)))

    def _chat(self, chat_id: Any) -> dict[str, Any]:
        try:
            chat_id = int(chat_id)
        except (TypeError, ValueError):
            raise chat_not_found() from None
        if chat_id in self.groups:
            return self.groups[chat_id]
        if chat_id in self.users:
            return self.private_chat(self.users[chat_id])
        raise chat_not_found()

    def _writable_chat(self, chat_id: Any) -> dict[str, Any]:
        chat = self._chat(chat_id)
        if chat["type"] == "private":
            if chat["id"] in self.blocked:
                raise blocked_by_user()
            if chat["id"] not in self.started:
                raise cannot_initiate()
        return chat

    def _reply(self, chat: dict[str, Any], call: ApiCall) -> dict[str, Any] | None:
        reply = call.params.get("reply_parameters")
        if not reply:
            return None
        target = self.messages.get((int(reply.get("chat_id", chat["id"])), int(reply["message_id"])))
        if target is None:
            if reply.get("allow_sending_without_reply"):
                return None
            raise bad_request("message to be replied not found")
        return {k: v for k, v in target.items() if k != "reply_to_message"}

    def _new_bot_message(self, chat: dict[str, Any], call: ApiCall) -> dict[str, Any]:
        markup = call.params.get("reply_markup")
        self._check_markup(markup)
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat["id"]), "from": BOT_USER, "chat": chat,
            "date": int(time.time()),
        }
        reply = self._reply(chat, call)
        if reply is not None:
            message["reply_to_message"] = reply
        if call.params.get("message_thread_id"):
            message["message_thread_id"] = int(call.params["message_thread_id"])
        _set_markup(message, markup)
        return message

    def _store(self, message: dict[str, Any]) -> dict[str, Any]:
        self.messages[(message["chat"]["id"], message["message_id"])] = message
        return message

    def _own_message(self, call: ApiCall, missing: str) -> dict[str, Any]:
        key = (int(call.params.get("chat_id", 0)), int(call.params.get("message_id", 0)))
        message = self.messages.get(key)
        if message is None:
            raise bad_request(missing)
        if message.get("from", {}).get("id") != BOT_ID:
            raise bad_request("message can't be edited")
        return message

    def _check_caption(self, caption: str | None) -> None:
        if caption and _utf16_len(caption) > CAPTION_LIMIT:
            raise bad_request("message caption is too long")

    def _check_markup(self, markup: Any) -> None:
        if not markup:
            return
        for row in markup.get("inline_keyboard", []):
            for button in row:
                if not button.get("text"):
                    raise bad_request("BUTTON_TEXT_INVALID")
                data = button.get("callback_data")
                if data is not None and not 1 <= len(data.encode()) <= 64:
                    raise bad_request("BUTTON_DATA_INVALID")

    def _photo(self, ref: str | None, upload: Upload | None, ignore_limit: bool = False) -> list[dict[str, Any]]:
        if upload is None:
            if not ref or ref not in self.files:
                raise bad_request("wrong file identifier/HTTP URL specified")
            data, file_id = self.files[ref], ref
        else:
            data = upload.data
            if len(data) > self.photo_max_bytes and not ignore_limit:
                raise bad_request("PHOTO_SAVE_FILE_INVALID")
            file_id = f"AgAC{secrets.token_urlsafe(24)}"
            self.files[file_id] = data
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except OSError:
            raise bad_request("IMAGE_PROCESS_FAILED") from None
        if width + height > 10_000 or max(width, height) > 20 * min(width, height):
            raise bad_request("PHOTO_INVALID_DIMENSIONS")
        scale = 90 / max(width, height)
        thumb_id = f"AgAC{secrets.token_urlsafe(24)}"
        self.files[thumb_id] = data
        return [
            {"file_id": thumb_id, "file_unique_id": thumb_id[-12:], "width": max(1, int(width * scale)),
             "height": max(1, int(height * scale)), "file_size": 1000},
            {"file_id": file_id, "file_unique_id": file_id[-12:], "width": width, "height": height,
             "file_size": len(data)},
        ]

    def _document(self, ref: str | None, upload: Upload | None) -> dict[str, Any]:
        if upload is None:
            if not ref or ref not in self.files:
                raise bad_request("wrong file identifier/HTTP URL specified")
            return {"file_id": ref, "file_unique_id": ref[-12:], "file_size": len(self.files[ref])}
        file_id = f"BQAC{secrets.token_urlsafe(24)}"
        self.files[file_id] = upload.data
        return {
            "file_id": file_id, "file_unique_id": file_id[-12:], "file_name": upload.filename,
            "mime_type": upload.content_type, "file_size": len(upload.data),
        }


def _set_markup(message: dict[str, Any], markup: Any) -> None:
    if markup and markup.get("inline_keyboard"):
        message["reply_markup"] = markup
    else:
        message.pop("reply_markup", None)


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _decode(name: str, value: str) -> Any:
    if name in _TEXT_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, Upload]]:
    params: dict[str, Any] = {}
    files: dict[str, Upload] = {}
    if request.content_type == "application/json":
        body = await request.json() if request.can_read_body else {}
        return dict(body), files
    if request.method == "GET":
        return {k: _decode(k, v) for k, v in request.query.items()}, files
    form = await request.post()
    for name, value in form.items():
        if isinstance(value, FileField):
            files[name] = Upload(value.filename, value.content_type, value.file.read())
        else:
            params[name] = _decode(name, str(value))
    return params, files


@asynccontextmanager
async def fake_telegram_server(token: str = DEFAULT_TOKEN) -> AsyncIterator[FakeTelegram]:
    """Serve a FakeTelegram on 127.0.0.1 at a free port; `base_url` is what PTB's base_url setting takes."""
    fake = FakeTelegram(token)
    # handler_cancellation: when the bot stops polling, its hanging getUpdates ends at once here too.
    runner = web.AppRunner(fake.app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base_url = f"http://{host}:{port}/bot"
    fake.base_file_url = f"http://{host}:{port}/file/bot"
    try:
        yield fake
    finally:
        await runner.cleanup()
