"""Structured JSON logs: one event per line, never PHI.

Log calls pass a fixed event name as the message and plain fields through ``extra={"fields":
{...}}``. Only fields the gateway itself computed go there (request id, route template, status,
latency, reason codes, exception class names): never query strings, bodies, tokens, header
values or exception messages from libraries, which may quote the input.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage() if not record.args else record.msg,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            event.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # the class only: messages and tracebacks may quote request data
            event["exception"] = record.exc_info[0].__name__
        return json.dumps(event, default=str, separators=(",", ":"))


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # library loggers that echo request lines or header values: keep them quiet
    for noisy in ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.client"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def log(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    logger.log(level, event, extra={"fields": fields})
