"""The one configuration object, read once at start-up from the environment and `.env`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.core.catalogue import ASPECT_RATIOS, DEFAULT_MODELS, ModelSpec
from bot.core.credits import CreditPack

__all__ = ["ASPECT_RATIOS", "DEFAULT_MODELS", "ModelSpec", "Settings", "describe_error", "load_settings"]

DEFAULT_CREDIT_PACKS = (
    CreditPack("small", credits=50, stars=25),
    CreditPack("medium", credits=120, stars=50),
    CreditPack("large", credits=300, stars=100),
)
DEFAULT_TERMS = (
    "Credits pay for images made with this bot: each model's price per image is shown by /models. "
    "Credits are reserved when you ask and given back for any image that isn't made. Bought credits don't "
    "expire and can't be exchanged for money; a refunded payment takes its credits back (those not yet "
    "spent). For help with a payment, use /paysupport."
)
MAX_STARS = 10_000  # Telegram's limit on one invoice's price


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Storage of records
    database_url: SecretStr | None = None
    data_dir: Path = Path("data")
    db_pool_max_size: int = Field(default=10, ge=2, le=200)
    db_connect_timeout_seconds: float = Field(default=60.0, ge=0)

    # Storage of image files
    storage_backend: Literal["local", "s3"] = "local"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str | None = None
    s3_prefix: str = "images/"
    s3_public_base_url: str | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_presign_seconds: int = Field(default=7 * 24 * 3600, ge=60, le=7 * 24 * 3600)

    # Credits
    credits_enabled: bool = True
    starting_credits: int = Field(default=20, ge=0)
    admin_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Packs of credits for sale (JSON): a price in Telegram Stars, a Discord SKU id, or both. A pack
    # without a price on a platform is not offered there. The default sells on Telegram out of the box.
    credit_packs: tuple[CreditPack, ...] = DEFAULT_CREDIT_PACKS
    # Who answers payment questions (/paysupport): a handle, an address or a link.
    payment_support: str = "the operator of this bot"
    # What /terms says (Telegram requires sellers to show their terms).
    terms_text: str = DEFAULT_TERMS
    # Users who may not buy credits (platform:user_id, comma-separated).
    banned_users: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Models and providers
    models: tuple[ModelSpec, ...] = DEFAULT_MODELS
    default_model: str | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    # An OpenAI-compatible chat-completions gateway with image output (OpenRouter, Vercel AI Gateway...).
    gateway_api_key: SecretStr | None = None
    gateway_base_url: str = "https://openrouter.ai/api/v1"
    # Google's Gemini API (generateContent), keyed from Google AI Studio.
    gemini_api_key: SecretStr | None = None
    gemini_base_url: str = "https://generativelanguage.googleapis.com/v1beta"
    # A self-hosted AUTOMATIC1111-compatible web UI started with --api (also Forge, SD.Next).
    a1111_base_url: str | None = None
    a1111_username: str | None = None  # for a server started with --api-auth user:password
    a1111_password: SecretStr | None = None
    # Requests in flight to A1111_BASE_URL, across every process of the deployment. One web UI renders one
    # job at a time (more only queue there and time out here); a farm of GPUs behind one URL takes one per GPU.
    a1111_max_concurrency: int = Field(default=1, ge=1, le=256)
    # Calls in flight to each hosted provider across the deployment (unset: no ceiling of its own, only
    # MAX_PROVIDER_CALLS per process). OpenAI limits images per minute by usage tier; the README says
    # which tier the default fits. Below any ceiling, 429s and Retry-After lower the pace adaptively.
    openai_max_concurrency: int | None = Field(default=32, ge=1, le=4096)
    gateway_max_concurrency: int | None = Field(default=None, ge=1, le=4096)
    gemini_max_concurrency: int | None = Field(default=None, ge=1, le=4096)
    # How far an img2img variation may move from its parent (0 = identical, 1 = ignore the parent).
    a1111_denoising_strength: float = Field(default=0.55, gt=0, le=1)
    provider_timeout_seconds: float = Field(default=180.0, gt=0)
    provider_max_retries: int = Field(default=4, ge=0, le=10)

    # Jobs. In flight per process: enough that a crowd arriving at once is not queued by the bot while the
    # providers could take it (their own ceilings are above).
    max_provider_calls: int = Field(default=64, ge=1, le=1024)
    max_jobs_in_flight: int = Field(default=64, ge=1, le=1024)
    per_user_jobs_in_flight: int = Field(default=2, ge=1, le=100)
    per_user_queued_limit: int = Field(default=10, ge=1, le=1000)
    job_lease_seconds: float = Field(default=30.0, ge=1)
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    job_deadline_seconds: float = Field(default=600.0, gt=0)
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    # How long a process holds an inbox event it is handling before another may (it died mid-way).
    inbox_claim_seconds: float = Field(default=120.0, ge=1)
    prompt_max_chars: int = Field(default=1000, ge=10, le=4000)
    # Words (or phrases) refused in prompts, checked before anything is charged. Comma-separated.
    banned_words: Annotated[list[str], NoDecode] = Field(default_factory=list)
    requests_per_minute: int = Field(default=10, ge=1, le=10_000)
    # Makes the offline demo model as slow as a real one, to watch queueing and progress.
    offline_delay_seconds: float = Field(default=0.0, ge=0, le=600)

    # Front ends
    discord_token: SecretStr | None = None
    discord_guild_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    discord_ready_timeout_seconds: float = Field(default=60.0, gt=0)
    # At most one preview edit per job this often: message edits are rate limited.
    discord_preview_interval_seconds: float = Field(default=5.0, ge=1)
    # Connections kept open for acknowledging interactions: as many as interactions may arrive at once.
    # A new connection costs TCP and TLS handshakes, more than Discord's patience with a busy bot allows.
    discord_warm_connections: int = Field(default=64, ge=0, le=1000)
    # Sharding (Discord requires it past 2,500 servers): the deployment's shard count, and the shards this
    # process runs (comma-separated; unset: all of them). Both unset: one unsharded connection.
    discord_shard_count: int | None = Field(default=None, ge=1, le=100_000)
    discord_shard_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    telegram_token: SecretStr | None = None
    telegram_base_url: str = "https://api.telegram.org/bot"
    telegram_base_file_url: str = "https://api.telegram.org/file/bot"
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: SecretStr | None = None
    telegram_webhook_listen: str = "0.0.0.0"
    telegram_webhook_port: int = Field(default=8443, ge=1, le=65535)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Health endpoint and Prometheus metrics: off unless a port is set.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("admin_ids", "banned_users", mode="before")
    @classmethod
    def _split_admins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("admin_ids", "banned_users")
    @classmethod
    def _admin_format(cls, value: list[str]) -> list[str]:
        for entry in value:
            platform, sep, user_id = entry.partition(":")
            if not sep or not platform or not user_id:
                raise ValueError(f"{entry!r} is not platform:user_id (e.g. discord:1234)")
        return value

    @field_validator("banned_words", mode="before")
    @classmethod
    def _split_words(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("credit_packs", mode="before")
    @classmethod
    def _read_packs(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, list):
            # A Discord id written as a JSON number is still the id.
            return [
                {**p, "discord_sku_id": str(p["discord_sku_id"])}
                if isinstance(p, dict) and isinstance(p.get("discord_sku_id"), int) else p
                for p in value
            ]
        return value

    @field_validator("discord_guild_ids", "discord_shard_ids", mode="before")
    @classmethod
    def _split_guilds(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("MODELS: model names must be unique")
        if self.default_model is not None and self.default_model not in names:
            raise ValueError(f"DEFAULT_MODEL: {self.default_model!r} is not in the model catalogue")
        if self.discord_shard_ids and self.discord_shard_count is None:
            raise ValueError("DISCORD_SHARD_IDS: set DISCORD_SHARD_COUNT too")
        for shard_id in self.discord_shard_ids:
            if not 0 <= shard_id < (self.discord_shard_count or 0):
                raise ValueError(f"DISCORD_SHARD_IDS: {shard_id} is not below DISCORD_SHARD_COUNT")
        self._check_packs()
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("S3_BUCKET: required when STORAGE_BACKEND=s3")
        return self

    def _check_packs(self) -> None:
        names = [p.name for p in self.credit_packs]
        if len(set(names)) != len(names):
            raise ValueError("CREDIT_PACKS: pack names must be unique")
        skus = [p.discord_sku_id for p in self.credit_packs if p.discord_sku_id is not None]
        if len(set(skus)) != len(skus):
            raise ValueError("CREDIT_PACKS: a Discord SKU can sell only one pack")
        for pack in self.credit_packs:
            if not (1 <= len(pack.name) <= 32) or not pack.name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"CREDIT_PACKS: {pack.name!r}: a name is 1-32 letters, digits, - or _")
            if not (1 <= pack.credits <= 1_000_000):
                raise ValueError(f"CREDIT_PACKS: {pack.name}: credits must be between 1 and 1000000")
            if pack.stars is not None and not (1 <= pack.stars <= MAX_STARS):
                raise ValueError(f"CREDIT_PACKS: {pack.name}: stars must be between 1 and {MAX_STARS}")
            if pack.discord_sku_id is not None and not pack.discord_sku_id.isdigit():
                raise ValueError(f"CREDIT_PACKS: {pack.name}: discord_sku_id must be a Discord id (digits)")

    @property
    def provider_ceilings(self) -> dict[str, int | None]:
        """Each provider's calls in flight across the deployment (None: no ceiling of its own)."""
        return {
            "automatic1111": self.a1111_max_concurrency,
            "openai": self.openai_max_concurrency,
            "gateway": self.gateway_max_concurrency,
            "gemini": self.gemini_max_concurrency,
        }

    @property
    def pg_data_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def local_images_dir(self) -> Path:
        return self.data_dir / "images"


def describe_error(error: ValidationError) -> str:
    """One line naming the variable and what is wrong with it."""
    first = error.errors()[0]
    location = "_".join(str(part) for part in first["loc"] if isinstance(part, str)).upper()
    message = first["msg"].removeprefix("Value error, ")
    return f"configuration error: {location}: {message}" if location else f"configuration error: {message}"


def load_settings(**overrides: object) -> Settings:
    """Read the settings or exit with status 2 and one clear line (no traceback)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        print(describe_error(error), file=sys.stderr)
        raise SystemExit(2) from None
