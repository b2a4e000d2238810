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
        if record.levelno >= PERSONAL_MASK_LEVEL:
            # (An exception's text, formatted only here, may name an address too.)
            line = mask_addresses(line)
        return self.masker.mask(line)


# Mail addresses at INFO and above show their domain only ("…@stadt.example"): enough to
# see which relay or recipient domain fails, not who wrote or received what. The full
# address of a failed delivery is where admins look anyway (`!bridge failed`, the outbox).
# Not a Matrix ID ("@anna.admin:stadt.example": no local part before the @, a ":" after).
_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?![:\w-])")
# The same address inside an email puppet's user ID ("@email_erika=40stadt.example:…",
# bridge/core/connector.py escape_localpart).
_ESCAPED_ADDRESS = re.compile(r"[a-z0-9._-]*(?:=[0-9a-f]{2}[a-z0-9._-]*)*=40([a-z0-9.-]+)")
PERSONAL_MASK_LEVEL = logging.INFO


def mask_addresses(text: str) -> str:
    """Mail addresses, plain or escaped in a puppet's user ID, reduced to their domain."""
    return _ESCAPED_ADDRESS.sub(r"…=40\1", _ADDRESS.sub(r"…@\1", text))


def _mask_personal(record: logging.LogRecord) -> None:
    """At INFO and above, no mail address beyond its domain (DEBUG keeps them: it is for
    looking into one problem, and off in production)."""
    if record.levelno < PERSONAL_MASK_LEVEL:
        return
    try:
        message = record.getMessage()
    except Exception:
        return
    masked = mask_addresses(message)
    if masked != message:
        record.msg, record.args = masked, ()


def install_record_masking(secrets: Iterable[str]) -> None:
    """Mask secrets (and, at INFO and above, mail addresses) in every log record from now
    on, for every handler."""
    masker = SecretMasker(secrets)

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = _PLAIN_RECORD_FACTORY(*args, **kwargs)
        masker.mask_record(record)
        _mask_personal(record)
        return record

    logging.setLogRecordFactory(make_record)


def setup_logging(level: str, fmt: str, secrets: Iterable[str],
                  stream: Any = None) -> None:
    secrets = list(secrets)
    install_record_masking(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_SecretMasking(secrets, as_json=fmt == "json"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Request-by-request chatter from libraries drowns the bridge's own lines.
    for noisy in ("aiohttp.access", "sqlalchemy.engine", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
