"""How a delivery failed decides what the outbox does next."""

from __future__ import annotations


class DeliveryError(Exception):
    """Base class; use one of the two below."""


class TemporaryError(DeliveryError):
    """Try again later (remote side down, rate limited). ``retry_after`` in seconds if known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """Retrying cannot help (forbidden, no such recipient). The room is told, with ``hint``."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class CommandError(Exception):
    """A bot command cannot be carried out; the message is shown to the user as is."""


class UsageError(CommandError):
    """A bot command was given the wrong words. The bot answers with the command's declared
    usage line (after ``message``, if given), so that line is written in one place only."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
