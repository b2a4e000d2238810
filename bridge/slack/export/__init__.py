"""Slack's standard workspace export, read as a stream: the reader the history import
(`bridge import slack-export`) is built on.

``open_export(path)`` (also spelled ``open``) gives an :class:`Export` with ``.users``,
``.channels`` and ``.messages(channel)``; every problem with the archive's content raises
:class:`ExportError`, which names the file inside the zip and the position in it.
"""

from __future__ import annotations

from bridge.slack.export.reader import (
    Channel,
    Channels,
    DayFile,
    Edited,
    Export,
    ExportError,
    ExportFile,
    ExportMessage,
    Position,
    Reaction,
    StoredFile,
    User,
    open_export,
)

# The short name of the reading API; callers that also use the builtin say open_export.
open = open_export

__all__ = [
    "Channel",
    "Channels",
    "DayFile",
    "Edited",
    "Export",
    "ExportError",
    "ExportFile",
    "ExportMessage",
    "Position",
    "Reaction",
    "StoredFile",
    "User",
    "open",
    "open_export",
]
