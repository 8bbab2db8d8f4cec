"""Prometheus metrics for operators. Defined once here; the health server (bot/observability.py) serves them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

JOBS_FINISHED = Counter("imagebot_jobs_finished", "Jobs that ended, by final status", ["status"], registry=REGISTRY)
JOBS_BY_STATUS = Gauge("imagebot_jobs", "Jobs in the database by status (read at scrape time)", ["status"],
                       registry=REGISTRY)
QUEUE_DEPTH = Gauge("imagebot_queue_depth", "Jobs waiting to be claimed", registry=REGISTRY)
PROVIDER_LATENCY = Histogram(
    "imagebot_provider_call_seconds", "One provider call, by provider and outcome", ["provider", "outcome"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300), registry=REGISTRY,
)
PROVIDER_ERRORS = Counter("imagebot_provider_errors", "Provider call errors by code", ["provider", "code"],
                          registry=REGISTRY)
CREDITS_RESERVED = Counter("imagebot_credits_reserved", "Credits reserved by accepted requests", registry=REGISTRY)
CREDITS_REFUNDED = Counter("imagebot_credits_refunded", "Credits refunded for undelivered images", registry=REGISTRY)
PLATFORM_ERRORS = Counter("imagebot_platform_api_errors", "Errors from a chat platform's API", ["platform", "kind"],
                          registry=REGISTRY)
