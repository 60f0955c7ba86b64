"""Structured JSON logging: one object per line, with only the fields a caller names explicitly.

CAUTION: never pass patient ids, FHIR content, access tokens or JWTs as fields, and never log an
exception's message: messages of client-input errors can quote what the client sent. Log the
exception type and where it was raised instead (`error_fields`).

    >>> log_event(logger, "hook.done", service="cramp-assessment", hookInstance="d1577c69", status=200)
    {"time": "2026-06-01T09:30:00.123Z", "level": "INFO", "logger": "cds.api", "event": "hook.done",
     "service": "cramp-assessment", "hookInstance": "d1577c69", "status": 200}
"""

from __future__ import annotations

import logging
import traceback
from datetime import UTC, datetime
from typing import Any, Final

import orjson

FIELDS_ATTR: Final = "cds_fields"


class JsonFormatter(logging.Formatter):
    """Formats records as JSON: time, level, logger, event (the message) and the record's named fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The type and the frames, never the message (see the module docstring).
            entry.update(error_fields(record.exc_info[1]))
        return orjson.dumps(entry, default=str).decode()


def error_fields(exc: BaseException | None) -> dict[str, Any]:
    """The exception's type and the innermost frames (file:line function), without its message."""
    if exc is None:
        return {}
    frames = traceback.extract_tb(exc.__traceback__)[-5:]
    return {
        "error": type(exc).__qualname__,
        "where": [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in frames],
    }


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log `event` with named fields (dropped when None)."""
    if logger.isEnabledFor(level):
        kept = {k: v for k, v in fields.items() if v is not None}
        logger.log(level, event, extra={FIELDS_ATTR: kept})


def uvicorn_log_config(level: str = "INFO") -> dict[str, Any]:
    """A `logging.config` dict for uvicorn workers: the same JSON lines, no access log."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "cds.logs.JsonFormatter"}},
        "handlers": {"stderr": handler},
        "loggers": {
            "cds": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
        },
    }
