"""Typed configuration: YAML file plus ``BRIDGE_SECTION__KEY`` environment overrides.

Every problem is reported as one :class:`ConfigError` whose message starts with the dotted
key path (``appservice.port: must be an integer between 1 and 65535``), so an operator
knows which line to fix without reading a traceback.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar
from urllib.parse import unquote

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

ENV_PREFIX = "BRIDGE_"

# Matrix user-ID localparts (spec "historical" grammar minus upper case, which Synapse refuses).
_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class ConfigError(Exception):
    """The configuration is unusable; the message names the key path."""


class Section(BaseModel):
    """A config section: refuses unknown keys."""

    # Unknown keys are almost always typos ("prot:" for "port:"); refusing them saves an
    # afternoon of wondering why a setting has no effect.
    model_config = ConfigDict(extra="forbid", validate_default=True)


def check_port(value: Any) -> int:
    # Used in "before" mode, so that "abc", 3.5 and 70000 all get the same sentence.
    if isinstance(value, bool):
        value = None
    try:
        port = int(value) if isinstance(value, int | str) else None
    except ValueError:
        port = None
    if port is None or not 1 <= port <= 65535:
        raise ValueError("must be an integer between 1 and 65535")
    return port


def check_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class HomeserverConfig(Section):
    address: str = "http://127.0.0.1:8008"
    # No default: a guessed server name gives the bot and every puppet a user ID the
    # homeserver refuses, which shows only much later and far from the cause.
    domain: str
    verify_tls: bool = True

    _address = field_validator("address")(check_url)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not _SERVER_NAME.match(value):
            raise ValueError("must be a Matrix server name such as example.org")
        return value


class AppserviceConfig(Section):
    id: str = "hub-bridge"
    address: str = "http://127.0.0.1:29330"
    hostname: str = "127.0.0.1"
    port: int = 29330
    bot_username: str = "bridgebot"
    bot_displayname: str = "Bridge bot"
    as_token: str = ""
    hs_token: str = ""

    _address = field_validator("address")(check_url)

    _port = field_validator("port", mode="before")(check_port)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9._\-]+$", value):
            raise ValueError("must contain only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("bot_username")
    @classmethod
    def _bot(cls, value: str) -> str:
        if not _LOCALPART.match(value):
            raise ValueError("must be a valid Matrix localpart (lower case a-z, 0-9, ._=-/+)")
        return value

    @field_validator("as_token", "hs_token")
    @classmethod
    def _token(cls, value: str) -> str:
        if len(value) < 16:
            raise ValueError(
                "must be set to a random secret of at least 16 characters "
                "(`bridge generate-config` makes one)"
            )
        return value


class DatabaseConfig(Section):
    url: str = "sqlite+aiosqlite:///bridge.db"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with sqlite+aiosqlite:// (embedded) or postgresql+asyncpg:// "
                "(production)"
            )
        return value


class OutboxConfig(Section):
    # How long a delivery that keeps failing temporarily is retried, before it is given up
    # and the room is told. Generous by default: a relay down over a long weekend must not
    # cost a single message.
    retry_base_seconds: float = Field(default=1.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    give_up_after_hours: float = Field(default=96.0, gt=0)


class HeartbeatConfig(Section):
    # Each process writes its liveness row and renews its claims and leases this often;
    # one whose row is older than expiry_seconds is taken for dead and its claimed work and
    # leases move to the others (see the README's "High availability").
    interval_seconds: float = Field(default=2.0, gt=0)
    expiry_seconds: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _room_for_missed_beats(self) -> HeartbeatConfig:
        if self.expiry_seconds < 3 * self.interval_seconds:
            raise ValueError(
                f"expiry_seconds ({self.expiry_seconds:g}) must be at least three times "
                f"interval_seconds ({self.interval_seconds:g}): a process that misses one "
                "beat (a slow database round trip) must not be taken for dead")
        return self


class BridgeSettings(Section):
    admins: list[str] = Field(default_factory=list)
    command_prefix: str = "!bridge"
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not re.match(r"^https://[^/\s]+", value):
            raise ValueError("must be an https:// URL (it is handed out to mail clients)")
        return value.rstrip("/")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig)

    @field_validator("admins")
    @classmethod
    def _admins(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not re.match(r"^@[^:\s]+:[^\s]+$", entry):
                raise ValueError(
                    f"{entry!r} is not a Matrix user ID or pattern like @alice:example.org "
                    "or @*:example.org"
                )
        return value

    def is_admin(self, user_id: str) -> bool:
        return any(fnmatch.fnmatchcase(user_id, pattern) for pattern in self.admins)


class ProvisioningConfig(Section):
    """The provisioning API (/_bridge/api/v1/) and the admin page (/_bridge/admin/)."""

    # Bearer token that acts as the operator. Empty: the API and the page answer 404.
    shared_secret: str = ""

    @field_validator("shared_secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("must be at least 16 characters (or empty to turn the API off); "
                             "`bridge generate-config` writes a random one")
        return value


class EncryptionConfig(Section):
    """End-to-bridge encryption (issue 13): the bridge decrypts what it relays out of an
    encrypted Matrix room and encrypts what it posts into one (bridge/matrix/crypto.py)."""

    # The bridge takes part in encrypted rooms. Off: linking an encrypted room is refused.
    allow: bool = False
    # Rooms the bridge creates (plans, direct chats with the bot) are encrypted.
    default: bool = False
    # The bridge refuses to link a room that is not encrypted.
    require: bool = False
    # How long a message whose key the bridge never got waits for it (the bridge asks the
    # sender's devices) before the room is told that it could not be bridged.
    key_wait_seconds: float = Field(default=60.0, gt=0)
    # The name of the bridge's device, as users see it in the device list of the bot.
    device_name: str = "Matrix hub bridge"

    @model_validator(mode="after")
    def _needs_allow(self) -> EncryptionConfig:
        for key in ("default", "require"):
            if getattr(self, key) and not self.allow:
                raise ValueError(f"encryption.{key}: needs encryption.allow: true (the bridge "
                                 "takes part in encrypted rooms only when allowed to)")
        return self


class DoublePuppetConfig(Section):
    """Double puppeting: a linked person's remote messages appear as their own Matrix account
    (through a second registration, bridge/registration.py)."""

    enabled: bool = False
    # The as_token of the second registration (`bridge generate-config` writes a random one).
    as_token: str = ""

    @model_validator(mode="after")
    def _token_when_enabled(self) -> DoublePuppetConfig:
        if self.enabled and len(self.as_token) < 16:
            raise ValueError("double_puppet.as_token: must be set to a random secret of at "
                             "least 16 characters when double_puppet.enabled is true "
                             "(`bridge generate-config` makes one)")
        return self


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Listener(NamedTuple):
    """A port the bridge opens, with the config key that sets it (for "port in use")."""

    key: str
    network: str | None  # None: the appservice listener of the bridge itself
    hostname: str
    port: int


class NetworkConfig(Section):
    """What every network's section has; each network's own model (in its folder) adds the
    rest and is included in :class:`Config` under the network's name by the registry."""

    enabled: bool = False
    puppet_prefix: str

    @field_validator("puppet_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or not _LOCALPART.match(value):
            raise ValueError("must be a non-empty Matrix localpart prefix (a-z, 0-9, ._=-/+)")
        return value

    def listeners(self, name: str) -> list[Listener]:
        """The ports the network opens when enabled (``name``: its section's key)."""
        return []

    def secrets(self) -> list[str]:
        """Values of this section that must never appear in a log line."""
        return []


_Network = TypeVar("_Network", bound=NetworkConfig)


class Config(Section):
    """The core's sections. The config a file is read into is a subclass made by
    :func:`config_model`, with one more section per network of the registry."""

    homeserver: HomeserverConfig
    appservice: AppserviceConfig
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    bridge: BridgeSettings = Field(default_factory=BridgeSettings)
    provisioning: ProvisioningConfig = Field(default_factory=ProvisioningConfig)
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig)
    double_puppet: DoublePuppetConfig = Field(default_factory=DoublePuppetConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _distinct_namespaces(self) -> Config:
        # Whose puppet a user is decides echo suppression, so namespaces must not overlap.
        enabled = [(n, s.puppet_prefix) for n, s in self.networks().items() if s.enabled]
        for name, prefix in enabled:
            if self.appservice.bot_username.startswith(prefix):
                raise ValueError(f"{name}.puppet_prefix: {prefix!r} would also match the bot "
                                 f"({self.appservice.bot_username!r})")
            for other, other_prefix in enabled:
                if other != name and other_prefix.startswith(prefix):
                    raise ValueError(f"{name}.puppet_prefix: {prefix!r} overlaps "
                                     f"{other}.puppet_prefix {other_prefix!r}")
        return self

    @property
    def bot_mxid(self) -> str:
        return f"@{self.appservice.bot_username}:{self.homeserver.domain}"

    @property
    def database_is_default(self) -> bool:
        """No ``database`` section (nor BRIDGE_DATABASE__URL): the embedded SQLite default."""
        return "database" not in self.model_fields_set

    def listeners(self) -> list[Listener]:
        """Every port ``bridge run`` listens on with this config."""
        found = [Listener("appservice.port", None, self.appservice.hostname,
                          self.appservice.port)]
        for name, section in self.networks().items():
            if section.enabled:
                found += section.listeners(name)
        return found

    def networks(self) -> dict[str, NetworkConfig]:
        """Every network section, enabled or not, by name."""
        return {name: value for name in type(self).model_fields
                if isinstance(value := getattr(self, name), NetworkConfig)}

    def section(self, model: type[_Network]) -> _Network:
        """A network's section by its model: ``config.section(SlackConfig)``."""
        for value in self.networks().values():
            if isinstance(value, model):
                return value
        raise LookupError(f"the config has no {model.__name__} section")

    def secrets(self) -> list[str]:
        """Values that must never appear in a log line (bridge/logs.py also masks the forms
        they take when URL-, JSON- or base64-encoded)."""
        values = [self.appservice.as_token, self.appservice.hs_token,
                  self.provisioning.shared_secret, self.double_puppet.as_token]
        password = _url_password(self.database.url)
        if password:
            # As written in the URL (percent-encoded) and as the driver gets it.
            values += [password, unquote(password)]
        for section in self.networks().values():
            values += section.secrets()
        return [v for v in values if v]


def config_model() -> type[Config]:
    """:class:`Config` with a section for every network of the registry, by its name."""
    from bridge.networks import networks

    return _config_model(tuple((n.name, n.config_model) for n in networks()))


@functools.cache
def _config_model(sections: tuple[tuple[str, type[NetworkConfig]], ...]) -> type[Config]:
    fields: dict[str, Any] = {name: (model, Field(default_factory=model))
                              for name, model in sections}
    model: type[Config] = create_model("Config", __base__=Config, **fields)
    return model


def _url_password(url: str) -> str | None:
    match = re.match(r"^[^:]+://[^:/@]*:([^@]*)@", url)
    return match.group(1) if match else None


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """``BRIDGE_APPSERVICE__AS_TOKEN=x`` sets ``appservice.as_token``, so secrets need no file."""
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        value: Any = raw
        # Lists and maps (bridge.admins) are given in YAML flow style; everything else stays a
        # string so that a numeric-looking token is not turned into an int.
        if raw.strip().startswith(("[", "{")):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{'.'.join(path)}: environment variable {name} is not valid "
                                  f"YAML: {exc.__class__.__name__}") from None
        node = data
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[path[-1]] = value


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown key (check the spelling; `bridge generate-config` lists every key)",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "float_parsing": "must be a number",
    "int_parsing": "must be an integer",
}

# Keys without a default, whose "is required" deserves a word on what to put there.
_REQUIRED_HINTS = {
    "homeserver": "is required: a section with at least homeserver.domain and "
                  "homeserver.address",
    "homeserver.domain": "is required: the server name of your homeserver, the part after "
                         "the colon in its user IDs (@alice:example.org -> example.org)",
}


def _format_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"])
    message = _MESSAGES.get(err["type"])
    if err["type"] == "missing":
        message = _REQUIRED_HINTS.get(loc, message)
    text = str(err["msg"]).removeprefix("Value error, ")
    if not loc or text.startswith(loc + "."):
        return text  # a check across keys: its message starts with the key path itself
    if message is None:
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            message = message.replace("Input should be", "must be")
        else:
            message = message[:1].lower() + message[1:]
    return f"{loc}: {message}"


def parse_config(data: Any, environ: Mapping[str, str] | None = None) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("(top level): the configuration must be a YAML mapping of sections")
    _apply_env(data, os.environ if environ is None else environ)
    try:
        return config_model().model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (create one with "
                          "`bridge generate-config -o " f"{path}`)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_config(data, environ)
