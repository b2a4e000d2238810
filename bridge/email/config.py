"""The ``email`` section of the config: room addresses, SMTP in and out, sender checks."""

from __future__ import annotations

import base64
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bridge.config import Listener, NetworkConfig, Section, check_port


class SmtpInConfig(Section):
    hostname: str = "127.0.0.1"
    port: int = 2525
    max_message_size: int = Field(default=25 * 1024 * 1024, gt=0)
    tls_cert: str | None = None
    tls_key: str | None = None

    _port = field_validator("port", mode="before")(check_port)


class SmtpOutConfig(Section):
    host: str = "127.0.0.1"
    port: int = 25
    username: str | None = None
    password: str | None = None
    security: Literal["none", "starttls", "tls"] = "none"
    # Connections to the relay are reused; this many deliveries run at once.
    max_connections: int = Field(default=4, ge=1, le=64)
    # A connection unused this long is closed (QUIT) rather than left for the relay to time
    # out (Postfix waits 300 s and logs a timeout for each).
    idle_seconds: float = Field(default=15.0, gt=0, le=300)

    _port = field_validator("port", mode="before")(check_port)


class EmailConfig(NetworkConfig):
    puppet_prefix: str = "email_"
    domain: str = ""
    smtp_in: SmtpInConfig = Field(default_factory=SmtpInConfig)
    smtp_out: SmtpOutConfig = Field(default_factory=SmtpOutConfig)
    sender_auth: Literal["none", "authentication_results", "verify"] = "authentication_results"
    authserv_id: str = ""
    # Signs reply and unsubscribe addresses, so they cannot be forged into another room.
    token_secret: str = ""
    # Matrix files up to this size are attached to mails; larger ones are sent as a link.
    max_attachment_size: int = Field(default=10 * 1024 * 1024, ge=0)
    # After this many hard bounces in a row a subscriber is paused and the room told.
    max_bounces: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _needed_when_enabled(self) -> EmailConfig:
        if not self.enabled:
            return self
        if not self.domain or not re.match(r"^[A-Za-z0-9.\-]+\.[A-Za-z]{2,}$|^localhost$",
                                           self.domain):
            raise ValueError("email.domain: must be the mail domain of room addresses, "
                             "e.g. bridge.stadt.example")
        if len(self.token_secret) < 16:
            raise ValueError("email.token_secret: must be a random secret of at least 16 "
                             "characters (`bridge generate-config` makes one)")
        if self.sender_auth == "authentication_results" and not self.authserv_id:
            raise ValueError("email.authserv_id: must name the MTA whose Authentication-Results "
                             "header is trusted (or set email.sender_auth to verify)")
        if bool(self.smtp_in.tls_cert) != bool(self.smtp_in.tls_key):
            raise ValueError("email.smtp_in.tls_key: tls_cert and tls_key must be set together")
        return self

    def listeners(self, name: str) -> list[Listener]:
        smtp = self.smtp_in
        return [Listener(f"{name}.smtp_in.port", name, smtp.hostname, smtp.port)]

    def secrets(self) -> list[str]:
        smtp = self.smtp_out
        values = [self.token_secret, smtp.password or ""]
        if smtp.username and smtp.password:
            # SMTP AUTH PLAIN sends user and password as one base64 blob.
            values.append(base64.b64encode(
                f"\0{smtp.username}\0{smtp.password}".encode()).decode())
        return values
