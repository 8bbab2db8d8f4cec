"""The command line: operator credit tools, `run` with nothing configured, secrets kept out of logs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.adapters.frontend import StartFailed
from bot.logs import RedactSecrets, secret_values
from tests.conftest import RuntimeFactory, make_settings


def bot_command(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_TOKEN", "_API_KEY"))}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**clean, "DATA_DIR": str(tmp_path), "LOG_LEVEL": "WARNING", **env},
    )


def test_operator_grants_revokes_and_reads_the_ledger(db_dsn: str, tmp_path: Path) -> None:
    grant = bot_command("credits", "grant", "telegram:42", "50", tmp_path=tmp_path, DATABASE_URL=db_dsn)
    assert grant.returncode == 0, grant.stderr
    assert "+50, balance now 70" in grant.stdout  # 20 welcome credits + 50
    revoke = bot_command("credits", "revoke", "telegram:42", "100", tmp_path=tmp_path, DATABASE_URL=db_dsn)
    assert "-70, balance now 0" in revoke.stdout
    ledger = bot_command("credits", "ledger", "telegram:42", tmp_path=tmp_path, DATABASE_URL=db_dsn)
    assert "balance 0" in ledger.stdout
    assert [line.split()[2:4] for line in ledger.stdout.splitlines()[1:]] == [
        ["-70", "revoke"], ["+50", "grant"], ["+20", "welcome"]
    ]
    bad = bot_command("credits", "grant", "nobody", "5", tmp_path=tmp_path, DATABASE_URL=db_dsn)
    assert bad.returncode == 2 and "platform:user_id" in bad.stderr


def test_run_without_tokens_says_so(tmp_path: Path) -> None:
    result = bot_command("run", tmp_path=tmp_path)
    assert result.returncode == 1
    assert "DISCORD_TOKEN" in result.stderr and "TELEGRAM_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_configured_secrets_are_redacted_from_log_lines(tmp_path: Path, caplog) -> None:
    token = "123456:AAE-very-secret-telegram-token"
    settings = make_settings(tmp_path, telegram_token=token, openai_api_key="sk-test-secret-key")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "POST https://api/bot%s/sendPhoto key=%s",
                               (token, "sk-test-secret-key"), None)
    RedactSecrets(secret_values(settings)).filter(record)
    message = record.getMessage()
    assert token not in message and "sk-test-secret-key" not in message
    assert message.count("[redacted]") == 2
    assert token not in repr(settings) and token not in str(settings.model_dump())


async def test_health_and_metrics_endpoint(runtime_factory, unused_port) -> None:
    import httpx

    from bot.core.models import Destination, ImagineRequest, UserIdentity

    async with runtime_factory(metrics_port=unused_port) as rt:
        await rt.start()
        await rt.service.imagine(UserIdentity("test", "m"), ImagineRequest("a metric fox", count=2),
                                 Destination("test", "c"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{unused_port}") as client:
            health = await client.get("/healthz")
            metrics = await client.get("/metrics")
    assert health.status_code == 200 and health.json() == {"status": "ok", "database": "ok"}
    assert 'imagebot_jobs{status="queued"} 1.0' in metrics.text
    assert "imagebot_queue_depth 1.0" in metrics.text
    assert "imagebot_credits_reserved_total" in metrics.text


async def test_every_front_end_refuses_a_missing_token_the_same_way(runtime_factory: RuntimeFactory) -> None:
    """One error type for what the operator must fix: the launcher prints it as one line."""
    from bot.adapters.discord.frontend import DiscordFrontEnd
    from bot.adapters.telegram.frontend import TelegramFrontEnd

    async with runtime_factory() as runtime:
        for front_end in (DiscordFrontEnd, TelegramFrontEnd):
            with pytest.raises(StartFailed, match="_TOKEN is not set"):
                front_end(runtime.settings, runtime.service, runtime.accounts)
