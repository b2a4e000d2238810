"""Logging setup: readable text or JSON lines, and no secret ever in a line.

Secrets are masked twice:

- in every log record as it is made (a record factory), so whichever handler gets it (ours,
  one a library or a test adds, any level, any logger: mautrix logging request bodies,
  slack-sdk logging request headers, aiohttp) sees the masked text;
- in the formatted line, so a token that reaches a line by any other path (an exception
  text formatted later, a JSON-escaped copy) is still caught.

A secret is looked for as written and in the forms it takes on the way out: URL-encoded (a
database password in a URL), JSON- or repr-escaped, and base64 (SMTP AUTH).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"

# The factory Python started with: setup_logging may run more than once (tests, `db
# upgrade` then `run`), and each time replaces the masking, never stacks it.
_PLAIN_RECORD_FACTORY = logging.getLogRecordFactory()


def secret_forms(secret: str) -> set[str]:
    """The secret and the encodings it may show up in."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret), repr(secret)[1:-1],
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    encoded = base64.b64encode(secret.encode()).decode()
    forms |= {encoded, encoded.rstrip("=")}
    return {form for form in forms if form}


class SecretMasker:
    """Replaces every form of every secret in a text by ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms = set().union(*(secret_forms(s) for s in secrets if s))
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def mask(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

    def mask_record(self, record: logging.LogRecord) -> None:
        """Mask the record in place; records without a secret are left exactly as they are."""
        if self._pattern is None:
            return
        try:
            message = record.getMessage()
        except Exception:
            return  # a broken format string: the handler reports it as usual
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            masked = self.mask(text)
            if masked != text:
                record.exc_text = masked
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)


class _SecretMasking(logging.Formatter):
    def __init__(self, secrets: Iterable[str], as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.masker = SecretMasker(secrets)
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        if self.as_json:
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname,
                "logger": record.name,
                "message": self.masker.mask(record.getMessage()),
            }
            exception = record.exc_text or (
                self.formatException(record.exc_info) if record.exc_info else "")
            if exception:
                entry["exception"] = self.masker.mask(exception)
            line = json.dumps(entry, ensure_ascii=False)
        else:
            line = super().format(record)
        return self.masker.mask(line)


def install_record_masking(secrets: Iterable[str]) -> None:
    """Mask secrets in every log record from now on, for every handler."""
    masker = SecretMasker(secrets)

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = _PLAIN_RECORD_FACTORY(*args, **kwargs)
        masker.mask_record(record)
        return record

    logging.setLogRecordFactory(make_record)


def setup_logging(level: str, fmt: str, secrets: Iterable[str]) -> None:
    secrets = list(secrets)
    install_record_masking(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SecretMasking(secrets, as_json=fmt == "json"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Request-by-request chatter from libraries drowns the bridge's own lines.
    for noisy in ("aiohttp.access", "sqlalchemy.engine", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
