"""Logging: one line per request and per lifecycle event; human-readable or JSON.

What a record carries from outside (paths, user agents, names, provider errors) cannot forge a
line: text logs escape control characters in it (`brain.control_chars`), and indent the lines a
record has by design (tracebacks), so every line that starts at the margin starts a record.
JSON lines are safe by construction (json.dumps escapes every control character). Secrets in
request paths (password-reset tokens) are redacted before any access line is written, and the
query string, where verification tokens and OAuth codes travel, is never logged.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import numbers
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

from brain.control_chars import escape_control

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
_ACCESS_MESSAGE = "%s %s %s %s %.2fms"
# Access lines wait at most this long on the event loop before they are written, in one go.
ACCESS_FLUSH_SECONDS = 0.05
# Distinct access line middles (all but the time and duration) a writer remembers.
_MIDDLES = 4096
# Path segments that are credentials: the token of an emailed reset link.
_SECRET_IN_PATH = re.compile(r"(/reset-password/)[^/]+", re.IGNORECASE)
_REDACTED = "[redacted]"
# Where a text record continues on another line (a traceback, a multi-line message).
_CONTINUATION = "\n    "


def redact_path(path: str) -> str:
    """A request path fit for a log: secret segments replaced by [redacted]."""
    if _SECRET_IN_PATH.search(path) is None:
        return path
    return _SECRET_IN_PATH.sub(r"\1" + _REDACTED, path)


class _Escaped:
    """A log argument whose str() and repr() have their control characters escaped."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape_control(str(self.value))

    def __repr__(self) -> str:
        return escape_control(repr(self.value))


def _escaped_args(args: tuple[Any, ...] | Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
    # Numbers stay themselves so that %d and %.2f still format them.
    if isinstance(args, Mapping):
        return {k: v if isinstance(v, numbers.Number) else _Escaped(v) for k, v in args.items()}
    return tuple(v if isinstance(v, numbers.Number) else _Escaped(v) for v in args)


def _text_format(process: str) -> str:
    """_TEXT_FORMAT with the process's label (`worker=2`) after the level, when it has one."""
    return _TEXT_FORMAT.replace("%(name)s", f"{process} %(name)s") if process else _TEXT_FORMAT


class TextFormatter(logging.Formatter):
    """The human-readable layout: data escaped onto its line, a record's own extra lines indented.

    `process` labels every line of a process that shares the log with others (`worker=2`,
    `master`; brain.workers).
    """

    def __init__(self, process: str = "") -> None:
        super().__init__(_text_format(process.replace("%", "%%")), _DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if record.args:
            # A copy: other handlers (and a JSON formatter) must see the record as it was.
            record = logging.makeLogRecord({**vars(record), "args": _escaped_args(record.args)})
        text = super().format(record)
        # What is left is the format string's and the traceback's: they may span lines (indented
        # here), and an exception message inside a traceback may still hold anything.
        return _CONTINUATION.join(escape_control(line) for line in text.split("\n"))


class _MalformedRequests(logging.Filter):
    """aiohttp logs every unparseable request (a control character in a header, an oversized
    line) at ERROR with a traceback: the client's mistake, and a way for anyone to flood the log.
    It becomes one DEBUG record naming the problem; the access line still shows the 400."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.msg, record.args = "%s: %s", (record.getMessage(), exc.message)
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        record.exc_info = record.exc_text = None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any `extra=` fields kept as keys (and `worker`, see TextFormatter)."""

    def __init__(self, worker: str = "") -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.worker:
            out["worker"] = self.worker
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(fmt: str = "text", level: str = "info", worker: str = "") -> None:
    """Configure the root logger once for the process; `worker` labels its lines ("2", "master")."""
    global _writer
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        handler.setFormatter(TextFormatter(f"worker={worker}" if worker else ""))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access logger is replaced by AccessLogger below.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("pykka").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequests) for f in server_log.filters):
        server_log.addFilter(_MalformedRequests())
    _writer = _AccessWriter(handler, json_lines=fmt == "json", worker=worker)


# Access log ---------------------------------------------------------------------------------
#
# aiohttp calls AccessLogger.log on the event loop after every response. Through `logging`
# (a LogRecord, a formatter, a write and a flush per line) costs a cheap request a large share
# of its CPU (docs/performance.md); so the loop only appends a tuple, and the lines of a batch
# are rendered and written with one write ACCESS_FLUSH_SECONDS later, in exactly the layout of
# setup_logging's formatter. If logging was configured some other way, each line goes through
# `logging` instead.

# (created, logger name, method, path, status, bytes, seconds, remote)
_Entry = tuple[float, str, str, str, int, int, float, "str | None"]
_batches: dict[asyncio.AbstractEventLoop, list[_Entry]] = {}


class _AccessWriter:
    """Renders access entries like setup_logging's handler would, and writes them at once."""

    def __init__(self, handler: logging.StreamHandler[Any], *, json_lines: bool, worker: str = "") -> None:
        self.handler = handler
        self.json_lines = json_lines
        self.worker = worker
        self._label = f"worker={worker} " if worker else ""
        self._second = -1
        self._stamp = ""
        # A text line's middle (logger, method, path redacted and escaped, status, size) by what
        # it is made of: most requests repeat one of a few, and redacting and escaping the path
        # again for each was half the cost of a line.
        self._middles: dict[tuple[str, str, str, int, int], str] = {}

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
            worker = {"worker": self.worker} if self.worker else {}
            for created, name, method, path, status, size, seconds, remote in entries:
                path = redact_path(path)
                lines.append(json.dumps({
                    "ts": round(created, 3), "level": "info", "logger": name,
                    "msg": _ACCESS_MESSAGE % (method, path, status, size, seconds * 1000),
                    **worker, "method": method, "path": path, "status": status, "bytes": size,
                    "ms": round(seconds * 1000, 3), "remote": remote,
                }, default=str))
        else:
            second, stamp, label, middles = -1, "", self._label, self._middles
            for created, name, method, path, status, size, seconds, _remote in entries:
                if int(created) != second:
                    second, stamp = int(created), self._asctime(created)
                # _TEXT_FORMAT with _ACCESS_MESSAGE, in one step (escaped as TextFormatter would).
                key = (name, method, path, status, size)
                middle = middles.get(key)
                if middle is None:
                    if len(middles) >= _MIDDLES:
                        middles.clear()
                    middle = middles[key] = (
                        f"{label}{name}: {method} {escape_control(redact_path(path))} {status} {size} "
                    )
                lines.append(f"{stamp} INFO    {middle}{seconds * 1000:.2f}ms")
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
        path = redact_path(path)
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
            writer.write(group)  # redacts the paths itself
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
    # The loop of this logger's connection (aiohttp makes one per connection), found once:
    # asyncio.get_running_loop() makes a getpid system call each time.
    _loop: asyncio.AbstractEventLoop | None = None

    def log(self, request: BaseRequest, response: StreamResponse, time_s: float) -> None:
        entry = (
            time.time(), self.logger_name, request.method, request.path, response.status,
            response.body_length, time_s, request.remote,
        )
        loop = self._loop
        if loop is None:
            try:
                loop = self._loop = asyncio.get_running_loop()
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
