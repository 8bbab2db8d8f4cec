"""The job a log line belongs to. Set at the start of a job's task; every line logged in it carries the id."""

from __future__ import annotations

import contextvars
import logging

job_id: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="-")


class JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = job_id.get()
        return True
