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
    """An administrative action (a bot command, an API call, a plan step) cannot be carried
    out; the message is shown to the person as is. ``status`` and ``errcode`` are what the
    provisioning API answers with (bridge/api/): 400 unless a subclass says otherwise."""

    status = 400
    errcode = "M_INVALID_PARAM"


class NotFoundError(CommandError):
    """What the action is about does not exist (a room the bot is not in, a link)."""

    status = 404
    errcode = "M_NOT_FOUND"


class ConflictError(CommandError):
    """The action collides with the state elsewhere (a channel linked to another room)."""

    status = 409
    errcode = "BRIDGE_CONFLICT"


class UnavailableError(CommandError):
    """A network or the homeserver cannot be reached or is not started: try again later."""

    status = 503
    errcode = "BRIDGE_UNAVAILABLE"


class UsageError(CommandError):
    """A bot command was given the wrong words. The bot answers with the command's declared
    usage line (after ``message``, if given), so that line is written in one place only."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
