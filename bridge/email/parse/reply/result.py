"""What reply splitting hands back: the new part, the signature, the quoted history."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReplySplit:
    text: str  # the new part
    signature: str | None  # the sender's signature below it
    quote: str | None  # the quoted history (attribution line included)
    bottom_posted: bool = False  # the quote stood above the new part

    @property
    def quoted(self) -> str | None:
        """Everything split off `text`, as one string."""
        parts = [p for p in (self.signature, self.quote) if p]
        return "\n\n".join(parts) if parts else None
