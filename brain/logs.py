"""Logging: one line per request and per lifecycle event; human-readable or JSON."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import time
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
_ACCESS_MESSAGE = "%s %s %s %s %.2fms"
# Access lines wait at most this long on the event loop before they are written, in one go.
ACCESS_FLUSH_SECONDS = 0.05


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
    global _writer
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT, _DATE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access logger is replaced by AccessLogger below.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("pykka").setLevel(logging.WARNING)
    _writer = _AccessWriter(handler, json_lines=fmt == "json")


# Access log ---------------------------------------------------------------------------------
#
# aiohttp calls AccessLogger.log on the event loop after every response. Through `logging`
# (a LogRecord, a formatter, a write and a flush per line) that cost ~15 % of a cheap request's
# CPU; so the loop only appends a tuple, and the lines of a batch are rendered and written with
# one write ACCESS_FLUSH_SECONDS later, in exactly the layout of setup_logging's formatter. If
# logging was configured some other way, each line goes through `logging` as before.

# (created, logger name, method, path, status, bytes, seconds, remote)
_Entry = tuple[float, str, str, str, int, int, float, "str | None"]
_batches: dict[asyncio.AbstractEventLoop, list[_Entry]] = {}


class _AccessWriter:
    """Renders access entries like setup_logging's handler would, and writes them at once."""

    def __init__(self, handler: logging.StreamHandler[Any], *, json_lines: bool) -> None:
        self.handler = handler
        self.json_lines = json_lines
        self._second = -1
        self._stamp = ""

    def usable(self, name: str) -> bool:
        """Whether lines of this logger would reach only our handler, unfiltered."""
        root = logging.getLogger()
        logger = logging.getLogger(name)
        return (
            root.handlers == [self.handler]
            and not self.handler.filters
            and not root.filters
            and not logger.handlers
            and not logger.filters
            and logger.propagate
            and self.handler.level <= logging.INFO
        )

    def _asctime(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime(_DATE_FORMAT, time.localtime(created))
        return self._stamp

    def write(self, entries: list[_Entry]) -> None:
        lines = []
        if self.json_lines:
            for created, name, method, path, status, size, seconds, remote in entries:
                lines.append(json.dumps({
                    "ts": round(created, 3), "level": "info", "logger": name,
                    "msg": _ACCESS_MESSAGE % (method, path, status, size, seconds * 1000),
                    "method": method, "path": path, "status": status, "bytes": size,
                    "ms": round(seconds * 1000, 3), "remote": remote,
                }, default=str))
        else:
            second, stamp = -1, ""
            for created, name, method, path, status, size, seconds, remote in entries:
                if int(created) != second:
                    second, stamp = int(created), self._asctime(created)
                # _TEXT_FORMAT with _ACCESS_MESSAGE, in one step.
                lines.append(f"{stamp} INFO    {name}: {method} {path} {status} {size} {seconds * 1000:.2f}ms")
        lines.append("")
        handler = self.handler
        handler.acquire()
        try:
            handler.stream.write(handler.terminator.join(lines))
            handler.flush()
        except Exception:  # noqa: BLE001 - like logging: a broken log stream never fails a request
            pass
        finally:
            handler.release()


_writer: _AccessWriter | None = None


def _log_through_logging(entries: list[_Entry]) -> None:
    for created, name, method, path, status, size, seconds, remote in entries:
        logger = logging.getLogger(name)
        extra = {"method": method, "path": path, "status": status, "bytes": size, "ms": round(seconds * 1000, 3),
                 "remote": remote}
        record = logger.makeRecord(
            name, logging.INFO, __file__, 0, _ACCESS_MESSAGE, (method, path, status, size, seconds * 1000), None,
            extra=extra,
        )
        record.created, record.msecs = created, (created - int(created)) * 1000
        logger.handle(record)


def _emit(entries: list[_Entry]) -> None:
    by_name: dict[str, list[_Entry]] = {}
    for entry in entries:
        by_name.setdefault(entry[1], []).append(entry)
    for name, group in by_name.items():
        writer = _writer
        if writer is not None and writer.usable(name):
            writer.write(group)
        else:
            _log_through_logging(group)


def _flush(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Write the access lines waiting on a loop (on every loop when None)."""
    loops = list(_batches) if loop is None else [loop]
    for key in loops:
        entries = _batches.pop(key, None)
        if entries:
            _emit(entries)


# Lines still waiting when the process exits (its loop gone) are written then.
atexit.register(_flush)


class AccessLogger(AbstractAccessLogger):
    """One line per request: role, method, path, status, size, duration, remote."""

    role = "http"
    logger_name = "brain.access.http"

    def log(self, request: BaseRequest, response: StreamResponse, time_s: float) -> None:
        entry = (
            time.time(), self.logger_name, request.method, request.path, response.status,
            response.body_length, time_s, request.remote,
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _emit([entry])
            return
        batch = _batches.get(loop)
        if batch is None:
            batch = _batches[loop] = []
            loop.call_later(ACCESS_FLUSH_SECONDS, _flush, loop)
        batch.append(entry)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def access_logger_for(role: str) -> type[AccessLogger]:
    """An AccessLogger subclass that tags lines with the role."""
    return type(f"AccessLogger_{role}", (AccessLogger,), {"role": role, "logger_name": f"brain.access.{role}"})
