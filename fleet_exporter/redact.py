"""The secret registry: every secret the process has seen, and ``redact`` to take them out.

Whoever reads a secret registers it here (``credentials`` for kubeconfigs, ``execplugin``
for plugin output, ``env:`` values and secret-looking args), and every text that leaves
the process passes ``redact`` where it is made (error texts) or on its way out (the log
handlers' ``RedactingFilter``). It sits below both, so data flows one way.
"""

from __future__ import annotations

import logging
import threading

# Secrets are indexed by their first _KEY chars, so redaction costs one dict lookup per
# character of text however many secrets there are (a regex alternation of thousands of
# secrets costs ~1 ms per line and its compile blocks the GIL for hundreds of ms).
_KEY = 4  # also the shortest secret remembered: shorter strings are ordinary words
_LIMITS = {"static": 8192, "rotating": 1024}  # rotating: refreshed exec tokens, oldest dropped
_pools: dict[str, dict[str, None]] = {"static": {}, "rotating": {}}
_index: dict[str, tuple[str, ...]] = {}  # prefix -> secrets, longest first
_secrets_lock = threading.Lock()


def register(*values: object, min_len: int = _KEY, pool: str = "static") -> None:
    """Remember secrets for ``redact`` (called from worker threads, never on the loop)."""
    with _secrets_lock:
        secrets = _pools[pool]
        for v in values:
            if not isinstance(v, str) or len(v) < max(min_len, _KEY) or v in secrets:
                continue
            secrets[v] = None
            bucket = {*_index.get(v[:_KEY], ()), v}
            _index[v[:_KEY]] = tuple(sorted(bucket, key=len, reverse=True))
        while len(secrets) > _LIMITS[pool]:
            old = next(iter(secrets))
            del secrets[old]
            if not any(old in other for other in _pools.values()):
                rest = tuple(x for x in _index[old[:_KEY]] if x != old)
                _index[old[:_KEY]] = rest  # replaced whole: readers never see a half update


def register_pem(pem: str) -> None:
    """A key leaks as the whole PEM, its base64 body, or single body lines: register each."""
    body = [line.strip() for line in pem.splitlines() if line.strip() and "-----" not in line]
    register(pem, pem.strip(), "".join(body))
    register(*body, min_len=16)


def redact(text: str) -> str:
    """Replace every secret any loaded Credentials has seen with ``<redacted>``."""
    index = _index
    if not index or not text:
        return text
    parts, start, i, end = [], 0, 0, len(text) - _KEY
    while i <= end:
        for secret in index.get(text[i : i + _KEY], ()):
            if text.startswith(secret, i):
                parts += (text[start:i], "<redacted>")
                i = start = i + len(secret)
                break
        else:
            i += 1
    return "".join((*parts, text[start:])) if parts else text


class RedactingFilter(logging.Filter):
    """Applies ``redact`` to a record's message, args, traceback and stack.

    Install it on the *handlers* (e.g. every handler of the root logger): a filter attached to
    a logger only sees records logged on that very logger, not those propagated from children.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _index:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging would print raw args; don't
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
