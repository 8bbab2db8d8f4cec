"""Images in an S3-compatible bucket (AWS, MinIO, R2, B2...) through aioboto3."""

from __future__ import annotations

import asyncio
import functools
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import quote

import aioboto3
from aiobotocore.session import AioSession
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from bot.core.storage.base import ImageStore, StorageError

# Keys are random and never rewritten, so whoever serves them may cache them for good.
CACHE_CONTROL = "public, max-age=31536000, immutable"


class S3Store(ImageStore):
    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint_url: str | None,
        region: str,
        access_key_id: SecretStr | None,
        secret_access_key: SecretStr | None,
        public_base_url: str | None,
        presign_seconds: int,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.presign_seconds = presign_seconds
        self._endpoint_url = endpoint_url
        # None lets boto's default chain (environment, instance role...) find credentials.
        botocore_session = AioSession()
        botocore_session.register_component("data_loader", _shared_data_loader())
        self._session = aioboto3.Session(
            botocore_session=botocore_session,
            aws_access_key_id=access_key_id.get_secret_value() if access_key_id else None,
            aws_secret_access_key=secret_access_key.get_secret_value() if secret_access_key else None,
            region_name=region,
        )
        self._config = Config(
            # Custom endpoints (MinIO, R2...) rarely have wildcard DNS for virtual-host buckets.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            signature_version="s3v4",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # total_max_attempts counts the first try; botocore's plain max_attempts counts only retries.
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            # botocore 1.36+ adds a CRC32 to every upload by default, which some S3-compatible services
            # refuse, and which costs CPU on every image. TLS already protects the bytes in transit.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._opening = asyncio.Lock()

    def object_key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    async def put(self, key: str, data: bytes, mime_type: str) -> None:
        client = await self._get_client()
        try:
            await client.put_object(
                Bucket=self.bucket,
                Key=self.object_key(key),
                Body=data,
                ContentType=mime_type,
                CacheControl=CACHE_CONTROL,
            )
        except (ClientError, BotoCoreError) as error:
            raise StorageError(f"cannot write {key}: {_describe(error)}") from error

    async def get(self, key: str) -> bytes:
        client = await self._get_client()
        try:
            response = await client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            async with response["Body"] as body:
                data: bytes = await body.read()
                return data
        except (ClientError, BotoCoreError) as error:
            raise StorageError(f"cannot read {key}: {_describe(error)}") from error

    async def url(self, key: str) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/{quote(self.object_key(key), safe='/')}"
        client = await self._get_client()
        try:
            url: str = await client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.object_key(key)},
                ExpiresIn=self.presign_seconds,
            )
        except (ClientError, BotoCoreError) as error:
            raise StorageError(f"cannot sign a URL for {key}: {_describe(error)}") from error
        return url

    async def delete(self, key: str) -> None:
        # S3 answers a delete of a missing key with success, which is what the interface wants.
        client = await self._get_client()
        try:
            await client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except (ClientError, BotoCoreError) as error:
            raise StorageError(f"cannot delete {key}: {_describe(error)}") from error

    async def aclose(self) -> None:
        async with self._opening:
            if self._stack is not None:
                await self._stack.aclose()
            self._stack = None
            self._client = None

    async def _get_client(self) -> Any:
        """One long-lived client (its connection pool is reused), opened on first use."""
        if self._client is not None:
            return self._client
        async with self._opening:
            if self._client is None:
                stack = AsyncExitStack()
                try:
                    self._client = await stack.enter_async_context(
                        self._session.client("s3", endpoint_url=self._endpoint_url, config=self._config)
                    )
                except (ClientError, BotoCoreError, ValueError) as error:
                    await stack.aclose()
                    raise StorageError(f"cannot open the S3 client: {_describe(error)}") from error
                self._stack = stack
        return self._client


@functools.cache
def _shared_data_loader() -> Any:
    """botocore's loader of service models, shared by every store in the process. It is a read-only cache,
    and parsing S3's model anew for each session costs a noticeable fraction of a second."""
    return AioSession().get_component("data_loader")


def _describe(error: Exception) -> str:
    """The S3 error code when there is one (NoSuchKey, AccessDenied...), else the exception's text."""
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "unknown")
        return f"{code} ({type(error).__name__})"
    return f"{type(error).__name__}: {error}"
