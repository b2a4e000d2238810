"""The admin page in a real browser: Debian's headless chromium, driven by Selenium through
Debian's chromedriver (Selenium Manager downloads nothing).

A bridge admin logs in with their Matrix user name and password (a wrong password and a user
who is no bridge admin are refused on the page), links a room to a Slack channel and an email
address and subscribes an address, all by filling in the page's forms; then the room really
is bridged: a Slack message reaches the Matrix room and the subscriber's mailbox. The audit
log on the page names the admin and the page; logging out ends the Matrix session.

Real Synapse, the Slack simulator, real SMTP; SQLite (the API's own tests cover PostgreSQL).
Skipped, naming what is missing, where no browser is installed (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from bridge.admin import audit
from testkit.helpers import open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import Received, SmtpSink
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.slack.conftest import ANNA, CHANNEL, SlackBridge, running_slack_and_email_bridge
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.relay_helpers import has_body, posted

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ERIKA = "erika@stadt.example"
WAIT = 30  # seconds for the page to show what an action did (a loaded suite is slow)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.skip(f"no browser for the admin page test: {' and '.join(missing)} missing "
                    "(Debian packages chromium and chromium-driver; .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,2000", "--no-first-run",
                     "--disable-extensions", "--disable-background-networking"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
async def page_bridge(homeserver: Homeserver, sqlite_url: str, slack_sim: SlackSimulator,
                      team: Any, sink: SmtpSink) -> AsyncIterator[SlackBridge]:
    async with running_slack_and_email_bridge(homeserver, sqlite_url, slack_sim, team,
                                              sink) as running:
        yield running


class Page:
    """The admin page in the browser. Selenium blocks, and the bridge answering the browser
    runs in this test's event loop: every browser step runs in a thread."""

    def __init__(self, driver: Any, url: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver = driver
        self.url = url
        self.by = By

    async def run(self, step: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(step, *args)

    def _find(self, css: str) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, css)

    def _wait(self, condition: Callable[[], Any], what: str) -> Any:
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        def check(_: Any) -> Any:
            try:
                return condition()
            except (NoSuchElementException, StaleElementReferenceException):
                return None  # the page is redrawing: look again

        try:
            return WebDriverWait(self.driver, WAIT, poll_frequency=0.1).until(check)
        except Exception as exc:
            raise AssertionError(f"the page did not show {what}; it shows:\n"
                                 f"{self.driver.find_element(self.by.TAG_NAME, 'body').text}"
                                 ) from exc

    def text_of(self, css: str) -> str:
        return str(self._find(css).text)

    async def wait_text(self, css: str, text: str) -> str:
        return await self.run(lambda: self._wait(
            lambda: (found := self.text_of(css)) and text in found and found,
            f"{text!r} in {css}"))

    async def visible(self, css: str) -> None:
        await self.run(lambda: self._wait(lambda: self._find(css).is_displayed(),
                                          f"{css} shown"))

    def _settled(self) -> None:
        """Until no call of the page is in flight: nothing is about to be redrawn."""
        self._wait(lambda: self._find("body").get_attribute("aria-busy") != "true",
                   "the page settled")

    async def fill(self, form: str, **fields: str) -> None:
        """Type into the form's fields (by name) and submit it."""
        from selenium.webdriver.support.ui import Select

        def step() -> None:
            self._settled()
            self._wait(lambda: self._find(form).is_displayed(), f"the form {form}")
            for name, value in fields.items():
                field = self._find(f"{form} [name={name}]")
                if field.tag_name == "select":
                    Select(field).select_by_value(value)
                else:
                    field.clear()
                    field.send_keys(value)
            self._find(f"{form} button[type=submit]").click()

        await self.run(step)

    async def click(self, css: str) -> None:
        def step() -> None:
            self._settled()
            # A redraw between finding and clicking makes the element stale: find it again.
            self._wait(lambda: self._find(css).click() or True, f"{css} to click")

        await self.run(step)

    async def open(self) -> None:
        await self.run(self.driver.get, self.url)

    def problems(self) -> list[str]:
        """What the browser's console reported besides refused API calls: scripts that
        failed, anything the page's Content-Security-Policy blocked."""
        return [entry["message"] for entry in self.driver.get_log("browser")
                if entry["level"] == "SEVERE"
                and "Failed to load resource" not in entry["message"]]


def plain(received: Received) -> str:
    body = received.message.get_body(("plain",))
    return str(body.get_content()) if body is not None else ""


async def register(homeserver: Homeserver, localpart: str, password: str) -> MatrixTestClient:
    user_id, token = await homeserver.synapse.register_user(localpart, password=password)
    client = MatrixTestClient(homeserver.url, user_id, token)
    await client.initial_sync()
    return client


async def devices(homeserver: Homeserver, token: str) -> tuple[int, list[str]]:
    """The display names of the user's devices, as the homeserver lists them."""
    async with aiohttp.ClientSession() as http, http.get(
            f"{homeserver.url}/_matrix/client/v3/devices",
            headers={"Authorization": f"Bearer {token}"}) as response:
        body = await response.json()
        return response.status, [d.get("display_name") for d in body.get("devices", [])]


async def api_status(homeserver: Homeserver, token: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{homeserver.bridge_port}/_bridge/api/v1/status",
            headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status


async def test_an_admin_links_a_room_and_subscribes_an_address_on_the_page(
        page_bridge: SlackBridge, browser: Any, homeserver: Homeserver, team: Any,
        sink: SmtpSink) -> None:
    sim = page_bridge.sim
    bot = homeserver.bot
    password = secrets.token_urlsafe(12)
    admin = await register(homeserver, f"admin{uuid.uuid4().hex[:8]}", password)
    other = await register(homeserver, f"user{uuid.uuid4().hex[:8]}", password)
    try:
        room = await open_room(bot, admin, bot_power=100, name="Bauamt Allgemein")
        page = Page(browser, f"http://127.0.0.1:{homeserver.bridge_port}/_bridge/admin/")
        await page.open()
        await page.visible("#login-matrix")

        # A wrong password, and a right one of someone who is no bridge admin: refused on
        # the page, and the refused user's new session is logged out again.
        admin_name = admin.user_id.split(":")[0][1:]
        await page.fill("#login-matrix", user=admin_name, password="not the password")
        await page.wait_text("#login-matrix .form-message", "Wrong user name or password")
        await page.fill("#login-matrix", user=other.user_id, password=password)
        await page.wait_text("#login-matrix .form-message",
                             f"{other.user_id} is not an admin of this bridge")
        status, names = await devices(homeserver, other.access_token)
        assert status == 200 and "Bridge admin page" not in names

        # The admin, by user name alone: the page shows the bridge.
        await page.fill("#login-matrix", user=admin_name, password=password)
        await page.wait_text("#who", admin.user_id)
        await page.wait_text("#networks", "slack")
        assert "email" in await page.run(page.text_of, "#networks")
        await page.wait_text(f'#room-list tr[data-room-id="{room}"]', "Bauamt Allgemein")
        await page.click(f'#room-list tr[data-room-id="{room}"] button')
        await page.wait_text("#room-detail h3", "Bauamt Allgemein")

        # Link Slack and email, subscribe Erika: each form says what the action did.
        await page.fill("#link-slack", channel=CHANNEL)
        await page.wait_text("#link-slack .form-message", "Linked this room to Slack")
        await page.wait_text("#room-links", CHANNEL)
        localpart = f"bauamt-{uuid.uuid4().hex[:6]}"
        address = f"{localpart}@{MAIL_DOMAIN}"
        await page.fill("#link-email", localpart=localpart)
        await page.wait_text("#link-email .form-message", "Linked this room to")
        await page.wait_text("#room-links", address)
        await page.fill("#subscribe", address=ERIKA, name="Erika Mustermann")
        await page.wait_text("#subscribe .form-message", "Subscribed Erika Mustermann")
        await page.wait_text("#subscribers", ERIKA)
        # A bad address gets the action's sentence next to the form, and changes nothing.
        await page.fill("#subscribe", address="nicht-gueltig", name="")
        await page.wait_text("#subscribe .form-message", "nicht-gueltig")
        assert "nicht-gueltig" not in await page.run(page.text_of, "#subscribers")

        # The room is bridged: Slack reaches Matrix and Erika's mailbox.
        await sim.post_message(team, CHANNEL, ANNA, text="Hallo aus Slack, über die Seite")
        await admin.wait_for_event(room, has_body("Hallo aus Slack, über die Seite"),
                                   timeout=WAIT)
        mail = (await sink.wait_for(lambda r: "Hallo aus Slack, über die Seite" in plain(r),
                                    timeout=WAIT))[0]
        assert mail.rcpt_tos == [ERIKA]
        await admin.send_text(room, "Antwort aus Matrix")
        await posted(sim, team, "Antwort aus Matrix")

        # A delivery that fails for good is listed on the page, and its button retries it.
        sim.fail("chat.postMessage", status=200, error="restricted_action", times=1)
        await admin.send_text(room, "Noch einmal, bitte")
        await admin.wait_for_event(room, lambda e: e["sender"] == bot and "Could not deliver"
                                   in e["content"].get("body", ""), timeout=WAIT)
        await page.click("#refresh")
        await page.wait_text("#failed-body", "restricted_action")
        await page.click("#failed-body tr[data-failed-id] button")
        await page.wait_text("#failed-form .form-message", "will be tried again now")
        await posted(sim, team, "Noch einmal, bitte")
        await page.click("#refresh")
        await page.wait_text("#failed-body", "No failed deliveries")

        # The audit log: the page's actions, by the admin, from the admin page.
        async with page_bridge.hub.db.sessions() as session:
            entries = await audit.entries(session)
        assert [(e.action, e.room_id, e.actor, e.via) for e in entries] == [
            ("link", room, admin.user_id, "admin-page"),
            ("link", room, admin.user_id, "admin-page"),
            ("subscribe", room, admin.user_id, "admin-page"),
            # A retry by delivery ID is its room's business too.
            ("retry", room, admin.user_id, "admin-page")]
        await page.wait_text("#audit-table", "retry")
        audit_text = await page.run(page.text_of, "#audit-table")
        assert "admin-page" in audit_text and admin.user_id in audit_text
        # The report: the room's sides and today's bar of its chart, one message from Slack
        # and two from Matrix.
        row = f'#report-body tr[data-room-id="{room}"]'
        await page.wait_text(row, "Bauamt Allgemein")
        assert "67 %" in await page.run(page.text_of, f"{row} .share")
        bars = await page.run(lambda: {
            bar.get_attribute("data-side"): bar.find_element(page.by.TAG_NAME, "title")
            .get_attribute("textContent")
            for bar in page.driver.find_elements(page.by.CSS_SELECTOR, f"{row} svg.chart rect")})
        assert set(bars) == {"matrix", "slack"}
        assert bars["matrix"].endswith("matrix: 2") and bars["slack"].endswith("slack: 1")

        # Logging out ends the Matrix session the page had, for the API too (whose answer
        # about the token was cached).
        token = await page.run(browser.execute_script,
                               "return sessionStorage.getItem('bridge-admin.token')")
        assert token and (await devices(homeserver, token))[0] == 200
        await page.click("#logout")
        await page.visible("#login-matrix")
        assert (await devices(homeserver, token))[0] == 401
        assert await api_status(homeserver, token) == 401
        assert await page.run(browser.execute_script,
                              "return sessionStorage.length") == 0

        # The operator, with the shared secret: the policy, unsubscribing, unlinking.
        secret = page_bridge.config.provisioning.shared_secret
        await page.fill("#login-secret", secret="not the secret at all")
        await page.wait_text("#login-secret .form-message", "neither the bridge's")
        await page.fill("#login-secret", secret=secret)
        await page.wait_text("#who", "operator")
        await page.click(f'#room-list tr[data-room-id="{room}"] button')
        await page.fill("#policy", policy="domain", domain="stadt.example")
        await page.wait_text("#policy .form-message", "From now on")
        assert await page.run(lambda: page._find("#policy-choice").get_attribute("value")) \
            == "domain"
        await page.click(f'#subscribers tr[data-address="{ERIKA}"] button')
        await page.wait_text("#subscribers .form-message", f"Unsubscribed {ERIKA}")
        await page.wait_text("#subscribers", "No subscribers yet")
        await page.click(f'#room-links li[data-link="{team.id}:{CHANNEL}"] button')
        await page.wait_text("#room-links .form-message", "Unlinked this room from Slack")
        assert CHANNEL not in await page.run(page.text_of, "#room-links ul")
        async with page_bridge.hub.db.sessions() as session:
            latest = (await audit.entries(session))[-3:]
        assert [(e.action, e.actor, e.via) for e in latest] == [
            ("policy", "operator", "admin-page"), ("unsubscribe", "operator", "admin-page"),
            ("unlink", "operator", "admin-page")]
        assert await page.run(page.problems) == []
    finally:
        await admin.close()
        await other.close()

