"""slack-sdk's DEBUG lines of Web API calls (each request and response) are written when
the bridge logs at DEBUG, and not even formatted otherwise."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from bridge.slack.config import SlackWorkspace
from bridge.slack.workspace import SDK_WEB_LOGGER, Workspace

pytestmark = pytest.mark.integration  # a local HTTP server stands in for Slack


@pytest.fixture
def root_level() -> Iterator[None]:
    root, sdk = logging.getLogger(), logging.getLogger(SDK_WEB_LOGGER)
    levels = root.level, sdk.level
    try:
        yield
    finally:
        root.setLevel(levels[0])
        sdk.setLevel(levels[1])


@pytest.fixture
async def slack_api() -> AsyncIterator[str]:
    async def post_message(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "channel": "C1", "ts": "1700000000.000100"})

    app = web.Application()
    app.router.add_post("/api/chat.postMessage", post_message)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/api/"
    finally:
        await runner.cleanup()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
async def test_the_web_api_client_logs_its_calls_at_the_bridges_level(
        root_level: None, slack_api: str, level: int) -> None:
    logging.getLogger().setLevel(level)
    settings = SlackWorkspace(name="demo", bot_token="xoxb-1", app_token="xapp-1")
    lines = _Lines()
    logging.getLogger().addHandler(lines)
    try:
        async with aiohttp.ClientSession() as session:
            ws = Workspace(settings, slack_api, session, rate_limits=False)
            answer = await ws.call("chat.postMessage", channel="C1", text="Guten Morgen")
    finally:
        logging.getLogger().removeHandler(lines)
    assert answer["ts"] == "1700000000.000100"
    written = [line for line in lines.lines if "chat.postMessage" in line]
    if level == logging.DEBUG:
        assert any(line.startswith("Sending a request") for line in written), lines.lines
        assert any(line.startswith("Received the following response")
                   for line in lines.lines), lines.lines
    else:
        assert written == []
        # Not built either: slack-sdk builds them only when its logger's own level is DEBUG.
        assert ws.client.logger.level > logging.DEBUG
