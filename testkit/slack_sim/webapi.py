"""The Web API methods: argument handling, Slack's error codes, responses.

`WebApi.call(method, params, token)` returns (HTTP status, JSON body, extra headers). Errors
are HTTP 200 with {"ok": false, "error": code}, except rate limits (429 + Retry-After),
injected failures and the simulator being offline (503).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from testkit.slack_sim.richtext import block_id
from testkit.slack_sim.state import (
    Channel,
    Im,
    JsonDict,
    PendingUpload,
    SimulatorError,
    Team,
    decode_cursor,
    encode_cursor,
    new_id,
    random_token,
    ts_to_micros,
)

if TYPE_CHECKING:
    from testkit.slack_sim.simulator import SlackSimulator

T = TypeVar("T")

# Rate limit tiers of the implemented methods, as in java-slack-sdk's
# metadata/web-api/rate_limit_tiers.json (the tests check they agree).
TIERS: dict[str, str] = {
    "apps.connections.open": "Tier1",
    "auth.test": "SpecialTier_auth_test",
    "bots.info": "Tier3",
    "chat.delete": "Tier3",
    "chat.getPermalink": "SpecialTier_chat_getPermalink",
    "chat.meMessage": "Tier3",
    "chat.postMessage": "SpecialTier_chat_postMessage",
    "chat.update": "Tier3",
    "conversations.archive": "Tier2",
    "conversations.history": "Tier3",
    "conversations.info": "Tier3",
    "conversations.join": "Tier3",
    "conversations.list": "Tier2",
    "conversations.members": "Tier4",
    "conversations.open": "Tier3",
    "conversations.replies": "Tier3",
    "emoji.list": "Tier2",
    "files.completeUploadExternal": "Tier4",
    "files.getUploadURLExternal": "Tier4",
    "files.info": "Tier4",
    "pins.add": "Tier2",
    "pins.list": "Tier2",
    "reactions.add": "Tier3",
    "reactions.remove": "Tier2",
    "team.info": "Tier3",
    "users.info": "Tier4",
    "users.list": "Tier2",
    "users.lookupByEmail": "Tier3",
    "users.profile.get": "Tier4",
}
PER_MINUTE = {"Tier1": 1, "Tier2": 20, "Tier3": 50, "Tier4": 100}

_EMOJI_NAME = re.compile(r"^[a-z0-9_+'\-]+(?:::skin-tone-[2-6])?$")


class ApiError(Exception):
    def __init__(self, error: str, *, messages: list[str] | None = None, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra
        if messages:
            self.extra["response_metadata"] = {"messages": messages}


# Scopes the simulator checks when a team's granted scopes are set (``Team.scopes``), as
# Slack's Web API reference lists them: any one of the list will do. Methods not listed here
# are not checked.
SCOPES: dict[str, tuple[str, ...]] = {
    # A 1:1 DM needs im:write; the method takes any of its conversation-writing scopes.
    "conversations.open": ("channels:write", "groups:write", "mpim:write", "im:write"),
    "users.lookupByEmail": ("users:read.email",),
}


def _missing(field: str) -> ApiError:
    return ApiError("invalid_arguments", messages=[f"[ERROR] missing required field: {field}"])


class Params:
    """Arguments of one call, whether they came as query string, form or JSON."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def opt(self, key: str, *, required: bool = False, error: str | None = None) -> str | None:
        value = self.raw.get(key)
        if value is None or value == "":
            if required:
                raise ApiError(error) if error else _missing(key)
            return None
        if isinstance(value, (dict, list)):
            raise ApiError("invalid_arguments",
                           messages=[f"[ERROR] invalid type for field: {key}"])
        return str(value)

    def req(self, key: str, *, error: str | None = None) -> str:
        value = self.opt(key, required=True, error=error)
        assert value is not None
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.raw.get(key)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return value
        return str(value).lower() in ("1", "true", "yes")

    def number(self, key: str, default: int) -> int:
        value = self.raw.get(key)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ApiError("invalid_arguments",
                           messages=[f"[ERROR] invalid type for field: {key}"]) from None

    def decoded(self, key: str, error: str) -> Any:
        value = self.raw.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, (list, dict)):
            return value
        try:
            return json.loads(value)
        except (TypeError, ValueError):
            raise ApiError(error) from None

    def stamp(self, key: str, error: str) -> int | None:
        value = self.opt(key)
        if value is None:
            return None
        try:
            return ts_to_micros(value)
        except ValueError:
            raise ApiError(error) from None


class Ctx:
    def __init__(self, team: Team, kind: str) -> None:
        self.team = team
        self.kind = kind  # "bot" or "app"


Handler = Callable[["WebApi", Ctx, Params], JsonDict]
METHODS: dict[str, Handler] = {}


def method(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        METHODS[name] = fn
        return fn
    return register


def paginate(items: list[T], key: Callable[[T], str], kind: str, cursor: str | None,
             limit: int) -> tuple[list[T], str]:
    start = 0
    if cursor:
        try:
            value = decode_cursor(cursor, kind)
        except ValueError:
            raise ApiError("invalid_cursor") from None
        for index, item in enumerate(items):
            if key(item) == value:
                start = index
                break
        else:
            raise ApiError("invalid_cursor")
    if limit <= 0:
        limit = len(items) or 1
    end = start + limit
    page = items[start:end]
    next_cursor = encode_cursor(kind, key(items[end])) if end < len(items) else ""
    return page, next_cursor


class WebApi:
    def __init__(self, sim: SlackSimulator) -> None:
        self.sim = sim
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    # -- entry point ----------------------------------------------------------------------
    def call(self, name: str, raw: dict[str, Any],
             token: str | None) -> tuple[int, JsonDict, dict[str, str]]:
        sim = self.sim
        sim.calls.append((name, raw))
        if not sim.online:
            return 503, {"ok": False, "error": "service_unavailable"}, {}
        handler = METHODS.get(name)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method", "req_method": name}, {}
        fault = sim.take_fault(name)
        if fault is not None:
            headers = ({"Retry-After": str(fault.retry_after)}
                       if fault.retry_after is not None else {})
            return fault.status, {"ok": False, "error": fault.error}, headers
        if not token:
            return 200, {"ok": False, "error": "not_authed"}, {}
        if token in sim.revoked_tokens:
            return 200, {"ok": False, "error": sim.revoked_tokens[token]}, {}
        owner = sim.token_owner(token)
        if owner is None:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        team, kind = owner
        if (kind == "app") != (name == "apps.connections.open"):
            return 200, {"ok": False, "error": "not_allowed_token_type"}, {}
        # Slack names the token's scopes on every answer to it (when the simulator knows
        # them: Team.scopes).
        granted = ({"x-oauth-scopes": ",".join(sorted(team.scopes))}
                   if team.scopes is not None and kind == "bot" else {})
        needed = SCOPES.get(name)
        if needed and team.scopes is not None and not team.scopes.intersection(needed):
            return 200, {"ok": False, "error": "missing_scope", "needed": ",".join(needed),
                         "provided": ",".join(sorted(team.scopes))}, granted
        params = Params(raw)
        if sim.enforce_tiers:
            retry_after = self._over_limit(team, name, params)
            if retry_after is not None:
                return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)}
        try:
            return 200, handler(self, Ctx(team, kind), params), granted
        except ApiError as exc:
            return 200, {"ok": False, "error": exc.error, **exc.extra}, granted

    def _over_limit(self, team: Team, name: str, params: Params) -> int | None:
        now = time.monotonic()
        tier = TIERS.get(name, "")
        if name == "chat.postMessage":
            channel = str(params.raw.get("channel", ""))
            key = (team.id, channel)
            burst = float(self.sim.post_message_burst)
            tokens, last = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last))  # one per second
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return max(1, math.ceil(1 - tokens))
            self._buckets[key] = (tokens - 1, now)
            return None
        limit = PER_MINUTE.get(tier)
        if limit is None:
            return None
        window = self._windows.setdefault((team.id, name), deque())
        while window and now - window[0] >= 60:
            window.popleft()
        if len(window) >= limit:
            return max(1, math.ceil(60 - (now - window[0])))
        window.append(now)
        return None

    # -- helpers --------------------------------------------------------------------------
    def channel(self, ctx: Ctx, params: Params, key: str = "channel", *,
                by_name: bool = False) -> Channel:
        """The channel a method names. As in Slack, only an ID unless ``by_name`` (which
        chat.postMessage and chat.meMessage allow): conversations.info and the rest answer
        channel_not_found for "general" or "#general"."""
        ref = params.opt(key)
        if ref is None:
            raise ApiError("channel_not_found")
        channel = ctx.team.find_channel(ref) if by_name else ctx.team.channels.get(ref)
        if channel is None or (channel.is_private and ctx.team.bot_user_id not in channel.members):
            raise ApiError("channel_not_found")
        return channel

    def member_channel(self, ctx: Ctx, params: Params, key: str = "channel") -> Channel:
        channel = self.channel(ctx, params, key)
        if ctx.team.bot_user_id not in channel.members:
            raise ApiError("not_in_channel")
        return channel

    def user_api(self, team: Team, user_id: str) -> JsonDict:
        user = team.users.get(user_id)
        if user is None:
            raise ApiError("user_not_found")
        return user.to_api(self.sim.base_url)

    def own_message(self, ctx: Ctx, channel: Channel, ts: str, error: str) -> JsonDict:
        message = channel.by_ts.get(ts)
        if message is None or message.get("subtype") == "tombstone":
            raise ApiError("message_not_found")
        if message.get("bot_id") != ctx.team.bot_id and message.get("user") != ctx.team.bot_user_id:
            raise ApiError(error)
        return message


# -- auth, apps, team, bots ----------------------------------------------------------------

@method("auth.test")
def auth_test(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    team = ctx.team
    return {"ok": True, "url": team.url, "team": team.name, "user": team.bot_name,
            "team_id": team.id, "user_id": team.bot_user_id, "bot_id": team.bot_id,
            "is_enterprise_install": False}


@method("apps.connections.open")
def apps_connections_open(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    ticket = api.sim.new_ticket(ctx.team)
    return {"ok": True,
            "url": f"{api.sim.ws_url}link/?ticket={ticket}&app_id={ctx.team.app_id}"}


@method("team.info")
def team_info(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    team = ctx.team
    wanted = p.opt("team")
    if wanted and wanted != team.id:
        raise ApiError("team_not_found")
    icon: JsonDict = {f"image_{s}": f"{api.sim.base_url}avatars/{team.id}/{team.id}_{s}.png"
                      for s in (34, 44, 68, 88, 102, 132, 230)}
    icon["image_original"] = icon["image_230"]
    icon["image_default"] = True
    return {"ok": True, "team": {
        "id": team.id, "name": team.name, "url": team.url, "domain": team.domain,
        "email_domain": "", "icon": icon, "avatar_base_url": "https://ca.slack-edge.com/",
        "is_verified": False, "discoverable": "", "lob_sales_home_enabled": False,
        "is_sfdc_auto_slack": False, "pay_prod_cur": "", "locale": "de-DE",
    }}


@method("bots.info")
def bots_info(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    bot = ctx.team.bots.get(p.opt("bot") or "")
    if bot is None:
        raise ApiError("bot_not_found")
    return {"ok": True, "bot": bot.to_api()}


@method("emoji.list")
def emoji_list(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    out: JsonDict = {"ok": True, "emoji": dict(ctx.team.emoji),
                     "cache_ts": f"{ctx.team.created}.000000"}
    if p.flag("include_categories"):
        out["categories_version"] = "5"
        out["categories"] = [{"name": "smileys_and_people",
                              "emoji_names": ["grinning", "smiley", "smile", "wink"]},
                             {"name": "objects", "emoji_names": ["memo", "calendar"]}]
    return out


# -- users ---------------------------------------------------------------------------------

@method("users.info")
def users_info(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    user = api.user_api(ctx.team, p.req("user", error="user_not_found"))
    if p.flag("include_locale"):
        user["locale"] = "de-DE"
    return {"ok": True, "user": user}


@method("users.list")
def users_list(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    users = list(ctx.team.users.values())
    page, next_cursor = paginate(users, lambda u: u.id, "user", p.opt("cursor"),
                                 p.number("limit", 0))
    members = [u.to_api(api.sim.base_url) for u in page]
    if p.flag("include_locale"):
        for member in members:
            member["locale"] = "de-DE"
    return {"ok": True, "members": members, "cache_ts": int(time.time()),
            "response_metadata": {"next_cursor": next_cursor}}


@method("users.profile.get")
def users_profile_get(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    user = api.user_api(ctx.team, p.opt("user") or ctx.team.bot_user_id)
    return {"ok": True, "profile": user["profile"]}


@method("users.lookupByEmail")
def users_lookup_by_email(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    email = p.req("email").lower()
    for user in ctx.team.users.values():
        if user.email and user.email.lower() == email:
            return {"ok": True, "user": user.to_api(api.sim.base_url)}
    raise ApiError("users_not_found")


# -- conversations -------------------------------------------------------------------------

@method("conversations.info")
def conversations_info(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    channel = api.channel(ctx, p)
    info = channel.to_api(bot_user_id=ctx.team.bot_user_id,
                          with_num_members=p.flag("include_num_members"))
    if p.flag("include_locale"):
        info["locale"] = "de-DE"
    return {"ok": True, "channel": info}


_CONVERSATION_TYPES = {"public_channel", "private_channel", "mpim", "im"}


@method("conversations.list")
def conversations_list(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    types = {t.strip() for t in (p.opt("types") or "public_channel").split(",") if t.strip()}
    if not types <= _CONVERSATION_TYPES:
        raise ApiError("invalid_types")
    limit = p.number("limit", 100)
    if limit < 0 or limit > 1000:
        raise ApiError("invalid_limit")
    team = ctx.team
    visible = [c for c in team.channels.values()
               if (("private_channel" in types and c.is_private and team.bot_user_id in c.members)
                   or ("public_channel" in types and not c.is_private))
               and not (p.flag("exclude_archived") and c.is_archived)]
    page, next_cursor = paginate(visible, lambda c: c.id, "team", p.opt("cursor"), limit or 100)
    return {"ok": True,
            "channels": [c.to_api(bot_user_id=team.bot_user_id) for c in page],
            "response_metadata": {"next_cursor": next_cursor}}


@method("conversations.members")
def conversations_members(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    channel = api.channel(ctx, p)
    limit = p.number("limit", 100)
    if limit < 0 or limit > 1000:
        raise ApiError("invalid_limit")
    page, next_cursor = paginate(list(channel.members), lambda m: m, "user", p.opt("cursor"),
                                 limit or 100)
    return {"ok": True, "members": page, "response_metadata": {"next_cursor": next_cursor}}


@method("conversations.join")
def conversations_join(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    team = ctx.team
    ref = p.opt("channel")
    channel = team.channels.get(ref) if ref else None  # an ID only, as in Slack
    if channel is None:
        raise ApiError("channel_not_found")
    if channel.is_private:
        if team.bot_user_id in channel.members:
            raise ApiError("method_not_supported_for_channel_type")
        raise ApiError("channel_not_found")
    if channel.is_archived:
        raise ApiError("is_archived")
    out: JsonDict = {"ok": True}
    if team.bot_user_id in channel.members:
        out["warning"] = "already_in_channel"
        out["response_metadata"] = {"warnings": ["already_in_channel"]}
    else:
        api.sim.join(team, channel, team.bot_user_id)
    out["channel"] = channel.to_api(bot_user_id=team.bot_user_id, with_num_members=False)
    return out


@method("conversations.open")
def conversations_open(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    """A 1:1 DM between the app's bot user and one person (multi-person DMs are not
    simulated). The same person gets the same ``D…`` channel every time; Slack then adds
    ``no_op`` and ``already_open``."""
    team = ctx.team
    ref = p.opt("channel")
    if ref is not None:
        im = team.im(ref)
        if im is None:
            raise ApiError("channel_not_found")
        return _opened(api, team, im, p, already=True)
    listed = [u.strip() for u in (p.opt("users") or "").split(",") if u.strip()]
    if not listed:
        raise ApiError("users_list_not_supplied")
    if len(listed) > 8:
        raise ApiError("too_many_users")
    others = [u for u in listed if u != team.bot_user_id]
    if not others:
        raise ApiError("cannot_dm_bot")
    if len(others) > 1:
        raise SimulatorError("the simulator opens 1:1 DMs only, not multi-person ones")
    user = team.users.get(others[0])
    if user is None:
        raise ApiError("user_not_found")
    if user.is_bot:
        raise ApiError("cannot_dm_bot")
    if user.deleted:
        raise ApiError("user_disabled")
    im = team.ims.get(user.id)
    if im is not None:
        return _opened(api, team, im, p, already=True)
    im = Im(team.id, new_id("D"), user.id, int(time.time()))
    team.ims[user.id] = im
    return _opened(api, team, im, p, already=False)


def _opened(api: WebApi, team: Team, im: Im, p: Params, *, already: bool) -> JsonDict:
    user = team.users.get(im.user)
    channel: JsonDict = (im.to_api(user_deleted=bool(user and user.deleted))
                         if p.flag("return_im") else {"id": im.id})
    out: JsonDict = {"ok": True}
    if already:
        out.update(no_op=True, already_open=True)
    out["channel"] = channel
    return out


def _history_limit(p: Params, default: int, maximum: int) -> int:
    limit = p.number("limit", default)
    if limit <= 0:
        return default
    return min(limit, maximum)


def _cursor_ts(p: Params) -> int | None:
    cursor = p.opt("cursor")
    if not cursor:
        return None
    try:
        return int(decode_cursor(cursor, "next_ts"))
    except ValueError:
        raise ApiError("invalid_cursor") from None


def _micros_cursor(micros: int) -> str:
    return encode_cursor("next_ts", str(micros))


@method("conversations.history")
def conversations_history(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    channel = api.member_channel(ctx, p)
    oldest = p.stamp("oldest", "invalid_ts_oldest") or 0
    latest = p.stamp("latest", "invalid_ts_latest")
    inclusive = p.flag("inclusive")
    limit = _history_limit(p, 100, 999)
    cursor = _cursor_ts(p)
    latest_inclusive = inclusive
    if cursor is not None:
        latest, latest_inclusive = cursor, True
    messages, has_more = channel.history_page(oldest=oldest, latest=latest,
                                              oldest_inclusive=inclusive,
                                              latest_inclusive=latest_inclusive, limit=limit + 1)
    page, more = _metadata_if_asked(p, messages[:limit]), messages[limit:]
    out: JsonDict = {"ok": True, "messages": page, "has_more": bool(more) or has_more,
                     "pin_count": 0, "channel_actions_ts": None, "channel_actions_count": 0}
    out["response_metadata"] = {"next_cursor": _micros_cursor(ts_to_micros(more[0]["ts"]))
                                if more else ""}
    if p.opt("oldest") is not None:
        out["oldest"] = p.opt("oldest")
    if p.opt("latest") is not None:
        out["latest"] = p.opt("latest")
    return out


def _metadata_if_asked(p: Params, messages: list[JsonDict]) -> list[JsonDict]:
    """Slack reads messages' metadata out only with include_all_metadata=true."""
    if p.flag("include_all_metadata"):
        return messages
    return [{k: v for k, v in m.items() if k != "metadata"} if "metadata" in m else m
            for m in messages]


@method("conversations.replies")
def conversations_replies(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    channel = api.member_channel(ctx, p)
    thread = channel.thread(p.req("ts", error="thread_not_found"))
    if thread is None:
        raise ApiError("thread_not_found")
    parent, replies = thread
    oldest = p.stamp("oldest", "invalid_ts_oldest") or 0
    latest = p.stamp("latest", "invalid_ts_latest")
    inclusive = p.flag("inclusive")
    cursor = _cursor_ts(p)
    limit = _history_limit(p, 1000, 1000)

    def wanted(message: JsonDict) -> bool:
        micros = ts_to_micros(message["ts"])
        if cursor is not None:
            if micros < cursor:
                return False
        elif micros < oldest or (micros == oldest and not inclusive):
            return False
        return latest is None or micros < latest or (micros == latest and inclusive)

    selected = [r for r in replies if wanted(r)]
    page, more = selected[:limit], selected[limit:]
    # Slack repeats the parent at the top of every page.
    return {"ok": True, "messages": _metadata_if_asked(p, [parent, *page]),
            "has_more": bool(more),
            "response_metadata": {"next_cursor": _micros_cursor(ts_to_micros(more[0]["ts"]))
                                  if more else ""}}


# -- chat ----------------------------------------------------------------------------------

def _thread_ts(p: Params) -> str | None:
    value = p.opt("thread_ts")
    if value is None:
        return None
    try:
        ts_to_micros(value)
    except ValueError:
        raise ApiError("invalid_thread_ts",
                       messages=[f"[ERROR] {value} is not a valid thread_ts"]) from None
    if "." not in value:
        raise ApiError("invalid_thread_ts", messages=[f"[ERROR] {value} is not a valid thread_ts"])
    return value


def _blocks(p: Params) -> list[JsonDict] | None:
    blocks = p.decoded("blocks", "invalid_blocks_format")
    if blocks is None:
        return None
    if not isinstance(blocks, list) or not all(isinstance(b, dict) and "type" in b for b in blocks):
        raise ApiError("invalid_blocks")
    if len(blocks) > 50:
        raise ApiError("invalid_blocks",
                       messages=["[ERROR] no more than 50 items allowed [json-pointer:/blocks]"])
    return [b if "block_id" in b else {**b, "block_id": block_id()} for b in blocks]


def _attachments(p: Params) -> list[JsonDict] | None:
    attachments = p.decoded("attachments", "invalid_attachments")
    if attachments is None:
        return None
    if not isinstance(attachments, list) or not all(isinstance(a, dict) for a in attachments):
        raise ApiError("invalid_attachments")
    if len(attachments) > 100:
        raise ApiError("too_many_attachments")
    return [{"id": i, **a} if "id" not in a else a for i, a in enumerate(attachments, start=1)]


def _writable(api: WebApi, ctx: Ctx, p: Params) -> Channel:
    channel = api.channel(ctx, p, by_name=True)
    if channel.is_archived:
        raise ApiError("is_archived")
    if ctx.team.bot_user_id not in channel.members:
        raise ApiError("not_in_channel")
    return channel


def _post_to_im(api: WebApi, ctx: Ctx, p: Params, im: Im) -> JsonDict:
    """chat.postMessage into a DM the app opened. Stored, not announced: the bridge's app
    does not subscribe to message.im events."""
    text = p.opt("text") or ""
    blocks = _blocks(p)
    if not text and not blocks:
        raise ApiError("no_text")
    if len(text) > 40000:
        raise ApiError("msg_too_long")
    user = ctx.team.users.get(im.user)
    if user is not None and user.deleted:
        raise ApiError("user_disabled")
    extra: JsonDict = {"blocks": blocks} if blocks is not None else {}
    message = api.sim.bot_message(ctx.team, text=text, extra=extra)
    im.messages.append(message)
    return {"ok": True, "channel": im.id, "ts": message["ts"], "message": message}


@method("chat.postMessage")
def chat_post_message(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    im = ctx.team.im(p.opt("channel") or "")
    if im is not None:
        return _post_to_im(api, ctx, p, im)
    channel = _writable(api, ctx, p)
    text = p.opt("text") or ""
    blocks = _blocks(p)
    attachments = _attachments(p)
    if not text and not blocks and not attachments:
        raise ApiError("no_text")
    if len(text) > 40000:
        raise ApiError("msg_too_long")
    thread_ts = _thread_ts(p)
    extra: JsonDict = {}
    if blocks is not None:
        extra["blocks"] = blocks
    if attachments is not None:
        extra["attachments"] = attachments
    username = p.opt("username")
    if username:
        extra["username"] = username
    icon_emoji, icon_url = p.opt("icon_emoji"), p.opt("icon_url")
    if icon_emoji:
        name = icon_emoji.strip(":")
        extra["icons"] = {"emoji": f":{name}:",
                          "image_64": f"https://a.slack-edge.com/production-standard-emoji-assets/14.0/apple-large/{name}.png"}
    elif icon_url:
        extra["icons"] = {"image_36": icon_url, "image_48": icon_url, "image_72": icon_url}
    metadata = p.decoded("metadata", "invalid_metadata_format")
    if metadata is not None:
        if not isinstance(metadata, dict) or "event_type" not in metadata:
            raise ApiError("invalid_metadata_format")
        extra["metadata"] = metadata
    message = api.sim.bot_message(ctx.team, text=text, extra=extra)
    broadcast = p.flag("reply_broadcast") and thread_ts is not None
    api.sim.publish(ctx.team, channel, message, thread_ts=thread_ts, broadcast=broadcast)
    return {"ok": True, "channel": channel.id, "ts": message["ts"], "message": message}


@method("chat.meMessage")
def chat_me_message(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    channel = _writable(api, ctx, p)
    text = p.opt("text")
    if not text:
        raise ApiError("no_text")
    message = api.sim.bot_message(ctx.team, text=text, extra={"subtype": "me_message"})
    api.sim.publish(ctx.team, channel, message)
    return {"ok": True, "channel": channel.id, "ts": message["ts"]}


@method("chat.update")
def chat_update(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    channel = api.channel(ctx, p)
    ts = p.req("ts", error="message_not_found")
    message = api.own_message(ctx, channel, ts, "cant_update_message")
    text = p.opt("text")
    blocks = _blocks(p)
    attachments = _attachments(p)
    if text is None and blocks is None and attachments is None and "text" not in p.raw:
        raise ApiError("no_text")
    if text is not None and len(text) > 40000:
        raise ApiError("msg_too_long")
    if text is None and "text" in p.raw:
        text = ""
    api.sim.edit(ctx.team, channel, message, editor=ctx.team.bot_user_id, text=text,
                 blocks=blocks, attachments=attachments, mark_edited=blocks is None)
    return {"ok": True, "channel": channel.id, "ts": ts, "text": message.get("text", ""),
            "message": message}


@method("chat.delete")
def chat_delete(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    channel = api.channel(ctx, p)
    ts = p.req("ts", error="message_not_found")
    api.own_message(ctx, channel, ts, "cant_delete_message")
    api.sim.delete(ctx.team, channel, ts)
    return {"ok": True, "channel": channel.id, "ts": ts}


@method("chat.getPermalink")
def chat_get_permalink(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    channel = api.channel(ctx, p)
    ts = p.req("message_ts", error="message_not_found")
    message = channel.by_ts.get(ts)
    if message is None:
        raise ApiError("message_not_found")
    link = f"{ctx.team.url}archives/{channel.id}/p{ts.replace('.', '')}"
    thread_ts = message.get("thread_ts")
    if thread_ts and thread_ts != ts:
        link += f"?thread_ts={thread_ts}&cid={channel.id}"
    return {"ok": True, "permalink": link, "channel": channel.id}


# -- reactions -----------------------------------------------------------------------------

def _reaction(api: WebApi, ctx: Ctx, p: Params, *, add: bool) -> JsonDict:
    name = p.req("name").strip(":")
    if not _EMOJI_NAME.match(name):
        raise ApiError("invalid_name")
    if p.opt("channel") is None or p.opt("timestamp") is None:
        raise ApiError("no_item_specified")
    channel = api.channel(ctx, p)
    ts = p.req("timestamp")
    try:
        ts_to_micros(ts)
    except ValueError:
        raise ApiError("bad_timestamp") from None
    error = api.sim.react(ctx.team, channel, ts, ctx.team.bot_user_id, name, add=add)
    if error:
        raise ApiError(error)
    return {"ok": True}


@method("reactions.add")
def reactions_add(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    return _reaction(api, ctx, p, add=True)


@method("reactions.remove")
def reactions_remove(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    return _reaction(api, ctx, p, add=False)


# -- pins and archiving ---------------------------------------------------------------------
# Slack's errors (docs.slack.dev/reference/methods/pins.add, conversations.archive): a bot
# token may pin and archive only where the app is a member; join and leave notices cannot
# be pinned; the general channel cannot be archived; a workspace preference may keep apps
# from archiving at all.

_NOT_PINNABLE = {"channel_join", "channel_leave", "group_join", "group_leave"}


@method("pins.add")
def pins_add(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    channel = api.channel(ctx, p)
    ts = p.opt("timestamp")
    if ts is None:
        raise ApiError("no_item_specified")
    try:
        ts_to_micros(ts)
    except ValueError:
        raise ApiError("bad_timestamp") from None
    if ctx.team.bot_user_id not in channel.members:
        raise ApiError("not_in_channel")
    if channel.is_archived:
        raise ApiError("is_archived")
    message = channel.by_ts.get(ts)
    if message is None or message.get("subtype") == "tombstone":
        raise ApiError("message_not_found")
    if message.get("subtype") in _NOT_PINNABLE:
        raise ApiError("not_pinnable")
    if ts in channel.pins:
        raise ApiError("already_pinned")
    channel.pins[ts] = {"created": int(time.time()), "created_by": ctx.team.bot_user_id}
    message["pinned_to"] = [channel.id]
    return {"ok": True}


@method("pins.list")
def pins_list(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    channel = api.channel(ctx, p)
    items = []
    for ts, pin in reversed(channel.pins.items()):  # Slack lists the newest pin first
        message = channel.by_ts.get(ts)
        if message is None:
            continue
        permalink = f"{ctx.team.url}archives/{channel.id}/p{ts.replace('.', '')}"
        items.append({"type": "message", "channel": channel.id, **pin,
                      "message": {**message, "permalink": permalink}})
    return {"ok": True, "items": items}


@method("conversations.archive")
def conversations_archive(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    team = ctx.team
    ref = p.opt("channel")
    channel = team.channels.get(ref) if ref else None  # an ID only, as in Slack
    if channel is None or (channel.is_private and team.bot_user_id not in channel.members):
        raise ApiError("channel_not_found")
    if channel.is_archived:
        raise ApiError("already_archived")
    if channel.is_general:
        raise ApiError("cant_archive_general")
    if team.bot_user_id not in channel.members:
        raise ApiError("not_in_channel")
    if team.archiving_restricted:
        raise ApiError("restricted_action")
    api.sim.archive(team, channel, team.bot_user_id)
    return {"ok": True}


# -- files ---------------------------------------------------------------------------------

@method("files.getUploadURLExternal")
def files_get_upload_url_external(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    filename = p.req("filename")
    length = p.number("length", -1)
    if length < 0:
        raise _missing("length")
    if length > 1024 * 1024 * 1024:
        raise ApiError("file_upload_size_restricted")
    key = random_token(32)
    file_id = new_id("F")
    ctx.team.uploads[key] = PendingUpload(file_id=file_id, filename=filename, length=length,
                                          alt_txt=p.opt("alt_txt") or p.opt("alt_text"),
                                          user_id=ctx.team.bot_user_id, bot_id=ctx.team.bot_id)
    return {"ok": True, "upload_url": f"{api.sim.base_url}upload/v1/{key}", "file_id": file_id}


@method("files.completeUploadExternal")
def files_complete_upload_external(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    team = ctx.team
    wanted = p.decoded("files", "invalid_arguments")
    if not isinstance(wanted, list) or not wanted or not all(
            isinstance(f, dict) and isinstance(f.get("id"), str) for f in wanted):
        raise _missing("files")
    by_id = {u.file_id: (key, u) for key, u in team.uploads.items()}
    uploads = []
    for item in wanted:
        found = by_id.get(item["id"])
        if found is None or found[1].data is None:
            raise ApiError("file_not_found")
        uploads.append((item, *found))
    channel_ids = [c for c in (p.opt("channels") or "").split(",") if c]
    if p.opt("channel_id"):
        channel_ids.insert(0, p.req("channel_id"))
    channels = []
    for channel_id in channel_ids:
        channel = team.channels.get(channel_id)  # IDs only, as in Slack
        if channel is None or (channel.is_private and team.bot_user_id not in channel.members):
            raise ApiError("channel_not_found")
        if team.bot_user_id not in channel.members:
            raise ApiError("not_in_channel")
        channels.append(channel)
    thread_ts = _thread_ts(p)
    stored_files = []
    for item, key, upload in uploads:
        del team.uploads[key]
        assert upload.data is not None
        stored_files.append(api.sim.store_file(
            team, user_id=upload.user_id, bot_id=upload.bot_id, filename=upload.filename,
            data=upload.data, mimetype=None, title=item.get("title") or upload.filename,
            alt_txt=upload.alt_txt, file_id=upload.file_id))
    comment = p.opt("initial_comment") or ""
    blocks = _blocks(p) if not comment else None
    for channel in channels:
        extra: JsonDict = {"subtype": "file_share", "upload": True, "display_as_bot": False}
        if blocks:
            extra["blocks"] = blocks
        message = api.sim.bot_message(team, text=comment, extra=extra)
        api.sim.share_stored_files(team, channel, stored_files, message, thread_ts=thread_ts)
    return {"ok": True, "files": [f.to_api(api.sim.base_url, team.domain, with_shares=True)
                                  for f in stored_files]}


@method("files.info")
def files_info(api: WebApi, ctx: Ctx, p: Params) -> JsonDict:
    stored = ctx.team.files.get(p.req("file", error="file_not_found"))
    if stored is None:
        raise ApiError("file_not_found")
    return {"ok": True, "file": stored.to_api(api.sim.base_url, ctx.team.domain, with_shares=True),
            "comments": [], "response_metadata": {"next_cursor": ""}}


def upload_received(sim: SlackSimulator, key: str, data: bytes) -> str | None:
    """Bytes POSTed to an upload_url; returns Slack's plain-text answer, None if unknown."""
    for team in sim.teams.values():
        upload = team.uploads.get(key)
        if upload is not None:
            upload.data = data
            return f"OK - {len(data)}"
    return None


__all__ = ["METHODS", "TIERS", "ApiError", "SimulatorError", "WebApi", "upload_received"]
