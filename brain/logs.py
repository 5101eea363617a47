"""Logging: one line per request and per lifecycle event; human-readable or JSON."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any `extra=` fields kept as keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access logger is replaced by AccessLogger below.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("pykka").setLevel(logging.WARNING)


class AccessLogger(AbstractAccessLogger):
    """One line per request: role, method, path, status, size, duration, remote."""

    role = "http"

    def log(self, request: BaseRequest, response: StreamResponse, time_s: float) -> None:
        logging.getLogger(f"brain.access.{self.role}").info(
            "%s %s %s %s %.2fms",
            request.method,
            request.rel_url.path,
            response.status,
            response.body_length,
            time_s * 1000,
            extra={
                "method": request.method,
                "path": request.rel_url.path,
                "status": response.status,
                "bytes": response.body_length,
                "ms": round(time_s * 1000, 3),
                "remote": request.remote,
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def access_logger_for(role: str) -> type[AccessLogger]:
    """An AccessLogger subclass that tags lines with the role."""
    return type(f"AccessLogger_{role}", (AccessLogger,), {"role": role})

