"""Pytest fixtures for a real S3 API: moto's server on 127.0.0.1, one fresh bucket per test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from bot.core.storage.s3 import S3Store

# moto accepts any credentials; passing them explicitly keeps the real environment out of the tests.
TEST_ACCESS_KEY = "testing"
TEST_SECRET_KEY = "testing"
TEST_REGION = "us-east-1"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server that lives for the whole test session."""
    # Port 0: the OS picks a free port and moto reports it, so there is no race with other processes.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def make_bucket(endpoint_url: str) -> str:
    name = f"test-{secrets.token_hex(6)}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=TEST_REGION,
        aws_access_key_id=TEST_ACCESS_KEY,
        aws_secret_access_key=TEST_SECRET_KEY,
    )
    client.create_bucket(Bucket=name)
    client.close()
    return name


def make_store(endpoint_url: str, bucket: str, **overrides: object) -> S3Store:
    arguments: dict[str, object] = {
        "bucket": bucket,
        "prefix": "images/",
        "endpoint_url": endpoint_url,
        "region": TEST_REGION,
        "access_key_id": SecretStr(TEST_ACCESS_KEY),
        "secret_access_key": SecretStr(TEST_SECRET_KEY),
        "public_base_url": None,
        "presign_seconds": 300,
        **overrides,
    }
    return S3Store(**arguments)  # type: ignore[arg-type]


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    return make_bucket(s3_server)


@pytest.fixture
async def s3_store(s3_server: str, s3_bucket: str) -> AsyncIterator[S3Store]:
    store = make_store(s3_server, s3_bucket)
    try:
        yield store
    finally:
        await store.aclose()
