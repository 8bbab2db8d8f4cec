"""Typed errors. Each carries the plain-words message a user may see; internals stay in the logs."""

from __future__ import annotations


class BotError(Exception):
    """An error the user caused or must be told about. `user_message` is safe to show in a chat."""

    code = "error"

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class InvalidRequest(BotError):
    code = "invalid_request"


class InsufficientCredits(BotError):
    code = "insufficient_credits"

    def __init__(self, balance: int, cost: int) -> None:
        super().__init__(f"This needs {cost} credit{'s' * (cost != 1)} and you have {balance}. Nothing was charged.")
        self.balance = balance
        self.cost = cost


class NotFound(BotError):
    """Also used for things that exist but are not the caller's to see: the two must look the same."""

    code = "not_found"

    def __init__(self, what: str = "That generation") -> None:
        super().__init__(f"{what} doesn't exist or isn't available to you.")


class Forbidden(BotError):
    code = "forbidden"


class TooBusy(BotError):
    code = "too_busy"


class ImagesUnavailable(BotError):
    """The image store could not return a generation's files (gone, or the store unreachable)."""

    code = "images_unavailable"

    def __init__(self) -> None:
        super().__init__("The original files are no longer available.")


class TemporarilyUnavailable(BotError):
    """The bot's own database could not be reached; the transaction did not commit."""

    code = "unavailable"

    def __init__(self) -> None:
        super().__init__("The bot can't reach its database right now. Nothing was charged; please try again shortly.")


class Contended(BotError):
    """Postgres chose this request's transaction as the victim of a deadlock (two requests on the same
    accounts at once, e.g. a /link while a job is charged): it was rolled back whole."""

    code = "contended"

    def __init__(self) -> None:
        super().__init__("Something else was changing your account at the same moment. Nothing was changed; "
                         "please try again.")


class ProviderError(BotError):
    """A failure reported by (or while talking to) an image provider."""

    code = "provider_error"
    retryable = False

    def __init__(self, user_message: str, *, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(user_message)
        self.detail = detail  # for the operator's log, never shown to the user
        self.retry_after = retry_after


class ContentRefused(ProviderError):
    code = "content_refused"


class RateLimited(ProviderError):
    code = "rate_limited"
    retryable = True


class ProviderUnavailable(ProviderError):
    code = "provider_unavailable"
    retryable = True


class ProviderBadRequest(ProviderError):
    code = "provider_bad_request"


class ProviderAuthError(ProviderError):
    code = "provider_auth"
