"""The ``slack`` section of the config: workspaces, the Events API listener, pacing."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from bridge.config import Listener, NetworkConfig, Section, check_port, check_url


class SlackWorkspace(Section):
    # A short name for commands (`!bridge link slack C0123 <name>`) and logs.
    name: str
    bot_token: str
    # With an app-level token (xapp-...) the workspace uses Socket Mode; without one, the
    # Events API over HTTP, verified with the signing secret.
    app_token: str | None = None
    signing_secret: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9._-]{1,40}$", value):
            raise ValueError("must be a short name of letters, digits, '.', '_' or '-'")
        return value

    @field_validator("bot_token")
    @classmethod
    def _bot_token(cls, value: str) -> str:
        if not value.startswith("xoxb-"):
            raise ValueError("must be the app's bot token (xoxb-...)")
        return value

    @field_validator("app_token")
    @classmethod
    def _app_token(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith("xapp-"):
            raise ValueError("must be an app-level token with connections:write (xapp-...)")
        return value

    @model_validator(mode="after")
    def _a_way_in(self) -> SlackWorkspace:
        if self.app_token is None and not self.signing_secret:
            raise ValueError("needs an app_token (Socket Mode) or a signing_secret (Events "
                             "API over HTTP, whose requests are verified with it)")
        return self


class EventsApiConfig(Section):
    hostname: str = "127.0.0.1"
    port: int = 8095
    path: str = "/slack/events"

    _port = field_validator("port", mode="before")(check_port)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value


class SlackConfig(NetworkConfig):
    puppet_prefix: str = "slack_"
    api_url: str = "https://slack.com/api/"
    workspaces: list[SlackWorkspace] = Field(default_factory=list)
    events_api: EventsApiConfig = Field(default_factory=EventsApiConfig)
    backfill_limit: int = Field(default=50, ge=0, le=1000)
    # Pace Web API calls to Slack's published per-method limits. Only turned off against a
    # Slack simulator (benchmarks); Slack itself answers 429 to a bridge that does not pace.
    rate_limits: bool = True
    # Slack events received but not yet stored, per workspace. While that many wait (the
    # database is slow or away), further events are not acknowledged: Slack sends them again.
    intake_queue_limit: int = Field(default=10_000, ge=1)
    # `slack finish` archives the Slack channel after pointing it at the Matrix room (the
    # app needs channels:manage / groups:write, and the workspace must let apps archive).
    # Off: the channel stays open, its pinned message saying where the conversation went.
    archive_on_finish: bool = False

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return check_url(value) + "/"

    @model_validator(mode="after")
    def _needed_when_enabled(self) -> SlackConfig:
        if not self.enabled:
            return self
        if not self.workspaces:
            raise ValueError("slack.workspaces: list at least one workspace (name, bot_token, "
                             "app_token or signing_secret)")
        names = [w.name for w in self.workspaces]
        if len(set(names)) != len(names):
            raise ValueError("slack.workspaces: each workspace needs its own name")
        return self

    def listeners(self, name: str) -> list[Listener]:
        # Socket Mode connects out; only workspaces on the Events API need a port.
        if not any(w.app_token is None for w in self.workspaces):
            return []
        api = self.events_api
        return [Listener(f"{name}.events_api.port", name, api.hostname, api.port)]

    def secrets(self) -> list[str]:
        values = []
        for workspace in self.workspaces:
            values += [workspace.bot_token, workspace.app_token or "",
                       workspace.signing_secret or ""]
        return values
