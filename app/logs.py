"""Structured logs: every record is one JSON line on stderr."""

from __future__ import annotations

import logging
import os
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    """`with_pid`: each line also says which process wrote it (several workers share stderr)."""

    def __init__(self, with_pid: bool = False) -> None:
        super().__init__()
        self.with_pid = with_pid

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if message.startswith("{"):  # access lines arrive already as JSON objects
            return self._with_pid(message, record) if self.with_pid else message
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        if self.with_pid:
            line["pid"] = record.process or os.getpid()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()

    @staticmethod
    def _with_pid(message: str, record: logging.LogRecord) -> str:
        rest = message[1:].lstrip()
        return f'{{"pid":{record.process or os.getpid()}{"," if rest != "}" else ""}{rest}'


def configure_logging(level: str, with_pid: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(with_pid))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
