"""The log: one line per record (logfmt or JSON), every record redacted, and a line
repeated within a minute folded into one with a count.

Folding matters when something breaks for everyone at once: with its descriptors
exhausted, asyncio logs ``socket.accept() out of system resource`` on every connection
attempt (139 MB of log in 85 s was measured before this), and a fleet of failing clusters
repeats the same warning at every scrape.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from .redact import RedactingFilter, redact

REPEAT_WINDOW = 60.0  # seconds in which a repeated line is counted, not written


def _traceback(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """The record's traceback, redacted: the text ``RedactingFilter`` already redacted
    when there is one, never one formatted afresh from ``exc_info`` and left as it is (an
    exception's message may carry a token)."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return redact(record.exc_text) if record.exc_text else None


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..."``: one line per record, greppable."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage()
        if (tb := _traceback(self, record)) is not None:
            msg += " " + tb.replace("\n", " | ")
        return (
            f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f"logger={record.name} msg={json.dumps(msg, ensure_ascii=False)}"
        )


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if (tb := _traceback(self, record)) is not None:
            doc["traceback"] = tb
        return json.dumps(doc, ensure_ascii=False)


class FoldRepeats(logging.Filter):
    """Drops a record whose logger, level and text were written less than ``window``
    seconds ago; the next time it is written, it says how often it was dropped."""

    def __init__(self, window: float = REPEAT_WINDOW, clock=time.monotonic) -> None:
        super().__init__()
        self.window, self.clock = window, clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        key = (record.name, record.levelno, text)
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if len(self._seen) > 10_000:  # bounded: forget what was written long ago
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        self._seen[key] = (now, 0)
        if last is not None and last[1]:
            record.msg, record.args = f"{text} (and {last[1]} times more in {self.window:g}s)", ()
        return True


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    # Every record passes the redactor: no token or key reaches the log, whoever logs it.
    handler.addFilter(RedactingFilter())
    handler.addFilter(FoldRepeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
