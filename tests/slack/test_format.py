"""Slack <-> Matrix formatting: mrkdwn, Block Kit, Matrix HTML, emoji.

Everything here is pure and fast; the whole file runs in a few seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.slack.format import (
    MatrixText,
    emote_to_slack,
    matrix_to_slack,
    slack_emoji_to_unicode,
    slack_to_matrix,
    unicode_to_slack_emoji,
)
from bridge.slack.format.common import escape_attr, escape_html
from bridge.slack.format.to_slack import _slack_escape

ALICE = "@alice:example.org"
CAROL = "@carol:example.org"
ROOM = "!general:example.org"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "slack-fixtures"

# The tags and attributes Matrix clients accept (spec, "m.room.message" HTML).
ALLOWED_TAGS = {
    "b", "strong", "i", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "a", "br", "p", "span",
}  # fmt: skip
ALLOWED_ATTRS = {"a": {"href"}, "ol": {"start"}}
SAFE_SCHEMES = ("https://", "http://", "mailto:", "ftp://", "tel:", "matrix:")


class SlackSide:
    """What the bridge knows about Slack users and channels."""

    def __init__(self, allow_room_mention: bool = False, via_server: str | None = None) -> None:
        self.allow_room_mention = allow_room_mention
        self.via_server = via_server

    def user(self, slack_user_id: str) -> tuple[str, str] | None:
        return {
            "U1": (ALICE, "Alice"),
            "U2": ("@slack_u2:example.org", "Bob <the builder> & co"),
            "W111": ("@slack_w111:example.org", "Wanda"),
        }.get(slack_user_id)

    def channel(self, slack_channel_id: str) -> tuple[str | None, str] | None:
        return {"C1": (ROOM, "general"), "C2": (None, "random")}.get(slack_channel_id)


class MatrixSide:
    """What the bridge knows about Matrix users and rooms."""

    def slack_user(self, matrix_user_id: str) -> str | None:
        return {ALICE: "U1"}.get(matrix_user_id)

    def display_name(self, matrix_user_id: str) -> str | None:
        return {CAROL: "Carol", ALICE: "Alice"}.get(matrix_user_id)

    def slack_channel(self, matrix_room_id: str) -> str | None:
        return {ROOM: "C1"}.get(matrix_room_id)


def pill(mxid: str, name: str) -> str:
    return f'<a href="https://matrix.to/#/{mxid}">{name}</a>'


def assert_safe_html(html: str | None) -> None:
    if html is None:
        return
    assert "<script" not in html.lower()
    root = lxml.html.fragment_fromstring(html, create_parent="div")
    for el in root.iterdescendants():
        assert isinstance(el.tag, str), html
        assert el.tag in ALLOWED_TAGS, (el.tag, html)
        for attr, value in el.attrib.items():
            assert attr in ALLOWED_ATTRS.get(el.tag, set()), (el.tag, attr, html)
            assert not attr.lower().startswith("on")
            if attr == "href":
                assert value.lower().startswith(SAFE_SCHEMES), html
                assert "javascript:" not in value.lower()


def to_matrix(text: str, blocks: list[dict[str, Any]] | None = None, **kw: Any) -> MatrixText:
    result = slack_to_matrix(text, blocks, SlackSide(**kw))
    assert_safe_html(result.html)
    return result


# ----------------------------------------------------------------------------------------
# Slack mrkdwn -> Matrix
# ----------------------------------------------------------------------------------------

MRKDWN_CASES = [
    # (mrkdwn, body, html or None)
    ("hello world", "hello world", None),
    ("two\nlines", "two\nlines", None),
    ("*bold*", "bold", "<strong>bold</strong>"),
    ("_italic_", "italic", "<em>italic</em>"),
    ("~strike~", "strike", "<del>strike</del>"),
    ("`code`", "`code`", "<code>code</code>"),
    ("a *b* c", "a b c", "a <strong>b</strong> c"),
    ("(*b*)", "(b)", "(<strong>b</strong>)"),
    # Slack needs word boundaries around emphasis markers.
    ("a*b*c", "a*b*c", None),
    ("snake_case_name", "snake_case_name", None),
    ("2*3*4 = 24", "2*3*4 = 24", None),
    ("a * not bold *", "a * not bold *", None),
    ("*unclosed", "*unclosed", None),
    ("*one\ntwo*", "*one\ntwo*", None),
    # Nesting.
    ("*_bold italic_*", "bold italic", "<strong><em>bold italic</em></strong>"),
    ("_*x*_ ~*y*~", "x y", "<em><strong>x</strong></em> <del><strong>y</strong></del>"),
    ("*bold ~and struck~ text*", "bold and struck text",
     "<strong>bold <del>and struck</del> text</strong>"),
    # Markers inside code and URLs are not styles.
    ("`*not bold* _nor_ ~this~`", "`*not bold* _nor_ ~this~`",
     "<code>*not bold* _nor_ ~this~</code>"),
    ("*see <https://x.org/a_b_c*d|docs>*", "see docs (https://x.org/a_b_c*d)",
     '<strong>see <a href="https://x.org/a_b_c*d">docs</a></strong>'),
    ("```*a* _b_\n<https://x.org|x> &lt;b&gt; :smile:```",
     "```\n*a* _b_\nx <b> :smile:\n```",
     "<pre><code>*a* _b_\nx &lt;b&gt; :smile:</code></pre>"),
    ("before\n```\ncode\n```\nafter", "before\n```\ncode\n```\nafter",
     "before<pre><code>code</code></pre>after"),
    # Entities: Slack escapes &, < and >.
    ("&lt;b&gt;not html&lt;/b&gt; &amp;amp; AT&amp;T", "<b>not html</b> &amp; AT&T", None),
    # Links.
    ("<https://example.org>", "https://example.org",
     '<a href="https://example.org">https://example.org</a>'),
    ("<https://example.org|the site>", "the site (https://example.org)",
     '<a href="https://example.org">the site</a>'),
    ("<https://example.org/?a=1&amp;b=2|a|b>", "a|b (https://example.org/?a=1&b=2)",
     '<a href="https://example.org/?a=1&amp;b=2">a|b</a>'),
    ("<mailto:a@b.org|a@b.org>", "a@b.org", '<a href="mailto:a@b.org">a@b.org</a>'),
    ("<javascript:alert(1)|click>", "click", None),
    ('<https://x.org/"onmouseover="x|q>', 'q (https://x.org/"onmouseover="x)',
     '<a href="https://x.org/&quot;onmouseover=&quot;x">q</a>'),
    # Mentions.
    ("hi <@U1>", "hi Alice", f"hi {pill(ALICE, 'Alice')}"),
    ("<@U1|alice> and <@U1>", "Alice and Alice",
     f"{pill(ALICE, 'Alice')} and {pill(ALICE, 'Alice')}"),
    ("<@U2>", "Bob <the builder> & co",
     pill("@slack_u2:example.org", "Bob &lt;the builder&gt; &amp; co")),
    ("<@U999>", "@U999", None),
    ("<@U999|dora>", "@dora", None),
    ("*<@U1>*", "Alice", f"<strong>{pill(ALICE, 'Alice')}</strong>"),
    ("<#C1>", "#general", f'<a href="https://matrix.to/#/{ROOM}">#general</a>'),
    ("<#C1|general>", "#general", f'<a href="https://matrix.to/#/{ROOM}">#general</a>'),
    ("<#C2>", "#random", None),
    ("<#C9|secret>", "#secret", None),
    ("<#C9>", "#C9", None),
    ("<!subteam^S123|@team> <!subteam^S9>", "@team @S9", None),
    ("<!date^1392734382^{date_num}|Feb 18, 2014>", "Feb 18, 2014", None),
    ("<!date^0^{date_num}>", "1970-01-01 00:00 UTC", None),
    # Emoji.
    (":smile: :+1: :thumbsup: :simple_smile: :slightly_smiling_face:", "😄 👍 👍 🙂 🙂", None),
    (":+1::skin-tone-3: :wave::skin-tone-6:", "👍🏼 👋🏿", None),
    (":partyparrot: :custom-emoji_1:", ":partyparrot: :custom-emoji_1:", None),
    ("at 10:30:00 :smile:", "at 10:30:00 😄", None),
    (":nope::smile:", ":nope:😄", None),
    ("*:fire: hot*", "🔥 hot", "<strong>🔥 hot</strong>"),
    # Quotes.
    ("&gt; quoted", "> quoted", "<blockquote>quoted</blockquote>"),
    ("&gt; one\n&gt; *two*\nafter", "> one\n> two\nafter",
     "<blockquote>one<br><strong>two</strong></blockquote>after"),
    ("&gt;&gt;&gt; all\nof this", "> all\n> of this", "<blockquote>all<br>of this</blockquote>"),
    ("a &gt; b", "a > b", None),
    ("\u200b&gt; text, not a quote", "> text, not a quote", None),
    # Lists as Slack users type them.
    ("• one\n• two", "• one\n• two", "<ul><li>one</li><li>two</li></ul>"),
    ("- one\n- *two*", "• one\n• two", "<ul><li>one</li><li><strong>two</strong></li></ul>"),
    ("1. one\n2. two", "1. one\n2. two", "<ol><li>one</li><li>two</li></ol>"),
    ("3. three\n4. four", "3. three\n4. four", '<ol start="3"><li>three</li><li>four</li></ol>'),
    ("• a\n    ◦ b\n        ▪ c\n• d", "• a\n    ◦ b\n        ▪ c\n• d",
     "<ul><li>a<ul><li>b<ul><li>c</li></ul></li></ul></li><li>d</li></ul>"),
    ("intro\n• a\n1. b", "intro\n• a\n1. b", "intro<ul><li>a</li></ul><ol><li>b</li></ol>"),
    ("&gt; • quoted item", "> • quoted item",
     "<blockquote><ul><li>quoted item</li></ul></blockquote>"),
    ("-1 is not a list", "-1 is not a list", None),
]


@pytest.mark.parametrize(("mrkdwn", "body", "html"), MRKDWN_CASES)
def test_mrkdwn_to_matrix(mrkdwn: str, body: str, html: str | None) -> None:
    result = to_matrix(mrkdwn)
    assert result.body == body
    assert result.html == html


def test_mentions_are_collected_once() -> None:
    result = to_matrix("<@U1> <@U2> <@U1> <@U999>")
    assert result.mentions == [ALICE, "@slack_u2:example.org"]
    assert not result.room_mention


@pytest.mark.parametrize("token", ["<!here>", "<!channel>", "<!everyone>", "<!here|here>"])
def test_broadcast_with_permission_is_room_mention(token: str) -> None:
    result = to_matrix(f"{token} meeting now", allow_room_mention=True)
    assert result.body == "@room meeting now"
    assert result.room_mention


@pytest.mark.parametrize(
    ("token", "shown"),
    [("<!here>", "@here"), ("<!channel>", "@channel"), ("<!everyone>", "@everyone")],
)
def test_broadcast_without_permission_is_plain(token: str, shown: str) -> None:
    result = to_matrix(f"{token} meeting now")
    assert result.body == f"{shown} meeting now"
    assert "@room" not in result.body
    assert not result.room_mention


def test_broadcast_inside_code_never_pings() -> None:
    result = to_matrix("`<!channel>`", allow_room_mention=True)
    assert result.html == "<code>@channel</code>"
    assert not result.room_mention


def test_mention_inside_code_is_text() -> None:
    result = to_matrix("`<@U1>`")
    assert result.html == "<code>@Alice</code>"
    assert result.mentions == []


def test_channel_link_names_the_homeserver_to_join_through() -> None:
    # Room IDs of room version 12 name no server: without ?via= Element cannot open the
    # room for someone who is not in it yet.
    result = to_matrix("see <#C1>", via_server="bridge.example.org")
    assert result.html == f'see <a href="https://matrix.to/#/{ROOM}?via=bridge.example.org">' \
        '#general</a>'
    unversioned = to_matrix("see <#C1>", via_server=None)
    assert unversioned.html == f'see <a href="https://matrix.to/#/{ROOM}">#general</a>'


def test_no_text_no_blocks() -> None:
    assert slack_to_matrix("", None, SlackSide()) == MatrixText("", None, [], False)


# ----------------------------------------------------------------------------------------
# Slack Block Kit -> Matrix
# ----------------------------------------------------------------------------------------


def rich(*elements: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "rich_text", "block_id": "b1", "elements": list(elements)}]


def section(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"type": "rich_text_section", "elements": list(elements)}


def text(value: str, **style: bool) -> dict[str, Any]:
    return {"type": "text", "text": value, **({"style": style} if style else {})}


RICH_CASES = [
    # (blocks, body, html)
    (rich(section(text("plain"))), "plain", None),
    (rich(section(text("b", bold=True), text(" "), text("i", italic=True), text(" "),
                  text("s", strike=True), text(" "), text("c", code=True))),
     "b i s `c`", "<strong>b</strong> <em>i</em> <del>s</del> <code>c</code>"),
    (rich(section(text("all", bold=True, italic=True, strike=True))), "all",
     "<strong><em><del>all</del></em></strong>"),
    (rich(section(text("a\nb"))), "a\nb", None),
    (rich(section(text("<b>&"))), "<b>&", None),
    (rich(section({"type": "link", "url": "https://x.org", "text": "X"},
                  text(" "), {"type": "link", "url": "https://y.org"})),
     "X (https://x.org) https://y.org",
     '<a href="https://x.org">X</a> <a href="https://y.org">https://y.org</a>'),
    (rich(section({"type": "link", "url": "javascript:alert(1)", "text": "bad"})), "bad", None),
    (rich(section({"type": "link", "url": "https://x.org", "text": "X",
                   "style": {"bold": True}})),
     "X (https://x.org)", '<strong><a href="https://x.org">X</a></strong>'),
    (rich(section(text("hi "), {"type": "user", "user_id": "U1"}, text(" "),
                  {"type": "user", "user_id": "U404"})),
     "hi Alice @U404", f"hi {pill(ALICE, 'Alice')} @U404"),
    (rich(section({"type": "channel", "channel_id": "C1"}, text(" "),
                  {"type": "channel", "channel_id": "C2"})),
     "#general #random", f'<a href="https://matrix.to/#/{ROOM}">#general</a> #random'),
    (rich(section({"type": "usergroup", "usergroup_id": "S1"})), "@S1", None),
    (rich(section({"type": "emoji", "name": "smile", "unicode": "1f604"},
                  {"type": "emoji", "name": "+1", "skin_tone": 4},
                  {"type": "emoji", "name": "wave", "unicode": "1f44b-1f3fb", "skin_tone": 2},
                  {"type": "emoji", "name": "partyparrot"})),
     "😄👍🏽👋🏻:partyparrot:", None),
    (rich(section({"type": "broadcast", "range": "here"})), "@here", None),
    (rich(section({"type": "date", "timestamp": 1392734382, "format": "{date}",
                   "fallback": "Feb 18"})), "Feb 18", None),
    (rich(section({"type": "date", "timestamp": 0, "format": "{date}"})),
     "1970-01-01 00:00 UTC", None),
    (rich({"type": "rich_text_preformatted",
           "elements": [text("x = *y*\n"), {"type": "link", "url": "https://z.org"}]}),
     "```\nx = *y*\nhttps://z.org\n```", "<pre><code>x = *y*\nhttps://z.org</code></pre>"),
    (rich({"type": "rich_text_quote", "elements": [text("wise "), text("words", bold=True)]}),
     "> wise words", "<blockquote>wise <strong>words</strong></blockquote>"),
    (rich(section(text("intro\n")),
          {"type": "rich_text_list", "style": "bullet", "indent": 0,
           "elements": [section(text("a")), section(text("b"))]},
          {"type": "rich_text_list", "style": "bullet", "indent": 1,
           "elements": [section(text("b1"))]},
          {"type": "rich_text_list", "style": "bullet", "indent": 0, "offset": 2,
           "elements": [section(text("c"))]},
          section(text("outro"))),
     "intro\n• a\n• b\n    ◦ b1\n• c\noutro",
     "intro<ul><li>a</li><li>b<ul><li>b1</li></ul></li><li>c</li></ul>outro"),
    (rich({"type": "rich_text_list", "style": "ordered", "indent": 0, "offset": 4,
           "elements": [section(text("five")), section(text("six", italic=True))]}),
     "5. five\n6. six", '<ol start="5"><li>five</li><li><em>six</em></li></ol>'),
    (rich({"type": "rich_text_list", "style": "ordered", "indent": 0,
           "elements": [section(text("one"))]},
          {"type": "rich_text_list", "style": "bullet", "indent": 1,
           "elements": [section(text("sub"))]}),
     "1. one\n    ◦ sub", "<ol><li>one<ul><li>sub</li></ul></li></ol>"),
]


@pytest.mark.parametrize(("blocks", "body", "html"), RICH_CASES)
def test_rich_text_to_matrix(blocks: list[dict[str, Any]], body: str, html: str | None) -> None:
    result = to_matrix("fallback text that must not be used", blocks)
    assert result.body == body
    assert result.html == html


def test_rich_text_mentions_and_broadcast() -> None:
    blocks = rich(section({"type": "user", "user_id": "U1"},
                          {"type": "broadcast", "range": "channel"}))
    result = to_matrix("", blocks, allow_room_mention=True)
    assert result.mentions == [ALICE]
    assert result.room_mention
    assert result.body == "Alice@room"


def test_rich_text_wins_over_text() -> None:
    result = to_matrix("*fallback*", rich(section(text("real"))))
    assert result.body == "real"


def test_empty_blocks_fall_back_to_text() -> None:
    assert to_matrix("*x*", []).html == "<strong>x</strong>"
    assert to_matrix("*x*", [{"type": "divider"}, {"type": "actions", "elements": []}]).body \
        == "---"
    assert to_matrix("*x*", [{"type": "actions", "elements": []}]).html == "<strong>x</strong>"


BLOCK_CASES = [
    ([{"type": "section", "text": {"type": "mrkdwn", "text": "*Deploy* done <@U1>"}}],
     "Deploy done Alice", f"<strong>Deploy</strong> done {pill(ALICE, 'Alice')}"),
    ([{"type": "section", "text": {"type": "plain_text", "text": "*not* :smile: <b>",
                                   "emoji": True}}],
     "*not* 😄 <b>", None),
    ([{"type": "section", "fields": [{"type": "mrkdwn", "text": "*Env:* prod"},
                                     {"type": "plain_text", "text": "v2"}]}],
     "Env: prod\nv2", "<strong>Env:</strong> prod<br>v2"),
    ([{"type": "header", "text": {"type": "plain_text", "text": "Release :rocket:"}},
      {"type": "divider"},
      {"type": "context", "elements": [{"type": "mrkdwn", "text": "by _ci_"},
                                       {"type": "image", "image_url": "https://i.org/x.png",
                                        "alt_text": "logo"}]}],
     "Release 🚀\n---\nby ci",
     "<strong>Release 🚀</strong><br>---<br><em>by <em>ci</em></em>"),
    ([{"type": "image", "image_url": "https://i.org/cat.png", "alt_text": "a cat"}],
     "a cat (https://i.org/cat.png)", '<a href="https://i.org/cat.png">a cat</a>'),
    ([{"type": "actions", "elements": [
        {"type": "button", "text": {"type": "plain_text", "text": "Open"},
         "url": "https://x.org"},
        {"type": "button", "text": {"type": "plain_text", "text": "Approve"}, "value": "1"}]}],
     "Open (https://x.org)\n[Approve]", '<a href="https://x.org">Open</a><br>[Approve]'),
]


@pytest.mark.parametrize(("blocks", "body", "html"), BLOCK_CASES)
def test_other_blocks_to_matrix(
    blocks: list[dict[str, Any]], body: str, html: str | None
) -> None:
    result = to_matrix("notification fallback", blocks)
    assert result.body == body
    assert result.html == html


# ----------------------------------------------------------------------------------------
# Matrix -> Slack
# ----------------------------------------------------------------------------------------

MATRIX_CASES = [
    # (body, html or None, mrkdwn)
    ("plain", None, "plain"),
    ("a < b & c > d", None, "a &lt; b &amp; c &gt; d"),
    ("<!channel> @room", None, "&lt;!channel&gt; @room"),
    ("x", "<b>bold</b> <strong>strong</strong>", "*bold* *strong*"),
    ("x", "<i>i</i> <em>em</em>", "_i_ _em_"),
    ("x", "<del>d</del> <s>s</s> <strike>st</strike>", "~d~ ~s~ ~st~"),
    ("x", "<code>a*b_c</code>", "`a*b_c`"),
    ("x", "<code>&lt;tag&gt;</code>", "`&lt;tag&gt;`"),
    ("x", "<b><i>both</i></b>", "*_both_*"),
    ("x", "<b>outer <b>inner</b></b>", "*outer inner*"),
    ("x", "<b>bold </b>next", "*bold* next"),
    ("x", "<b>two<br>lines</b>", "*two*\n*lines*"),
    ("x", "<pre><code class=\"language-py\">x = 1\nif a &lt; b: *c*\n</code></pre>",
     "```x = 1\nif a &lt; b: *c*```"),
    ("x", "<blockquote>quoted<br>twice</blockquote>after", "> quoted\n> twice\nafter"),
    ("x", "<blockquote><p>one</p><p>two</p></blockquote>", "> one\n>\n> two"),
    ("x", "<ul><li>a</li><li>b</li></ul>", "• a\n• b"),
    ("x", "<ol><li>a</li><li>b</li></ol>", "1. a\n2. b"),
    ("x", '<ol start="7"><li>a</li><li>b</li></ol>', "7. a\n8. b"),
    ("x", "<ul><li>a<ul><li>b<ol><li>c</li></ol></li></ul></li><li>d</li></ul>",
     "• a\n    ◦ b\n        1. c\n• d"),
    ("x", "<p>one</p><p>two</p>", "one\n\ntwo"),
    ("x", "<p>one</p>\n<ul>\n<li>a</li>\n</ul>\n", "one\n\n• a"),
    ("x", "line<br>break<br/>\nnext", "line\nbreak\nnext"),
    ("x", "<h1>Title</h1>text", "*Title*\n\ntext"),
    ("x", '<a href="https://example.org">site</a>', "<https://example.org|site>"),
    ("x", '<a href="https://example.org">https://example.org</a>', "<https://example.org>"),
    ("x", '<a href="mailto:a@b.org">a@b.org</a>', "<mailto:a@b.org>"),
    ("x", '<a href="https://x.org/?a=1&amp;b=2|3">a &lt;b&gt; | c</a>',
     "<https://x.org/?a=1&amp;b=2%7C3|a &lt;b&gt; | c>"),
    ("x", '<a href="javascript:alert(1)">click</a>', "click"),
    ("x", '<b><a href="https://x.org">bold link</a></b>', "*<https://x.org|bold link>*"),
    ("x", f'hi {pill(ALICE, "Alice")}', "hi <@U1>"),
    ("x", f'hi {pill("@alice%3Aexample.org", "Alice")}', "hi <@U1>"),
    ("x", f'{pill(CAROL, "caro")}', "@Carol"),
    ("x", f'{pill("@dave:example.org", "Dave &amp; co")}', "@Dave &amp; co"),
    ("x", f'{pill("@eve:example.org", "")}', "@eve:example.org"),
    ("x", '<a href="matrix:u/alice:example.org">Alice</a>', "<@U1>"),
    ("x", f'<a href="https://matrix.to/#/{ROOM}?via=example.org">#general</a>', "<#C1>"),
    ("x", '<a href="https://matrix.to/#/!other:example.org">#other</a>', "#other"),
    ("x", '<a href="https://matrix.to/#/#alias:example.org">#alias:example.org</a>',
     "#alias:example.org"),
    ("x", f'<a href="https://matrix.to/#/{ROOM}/$event">msg</a>',
     f"<https://matrix.to/#/{ROOM}/$event|msg>"),
    ("x", "@room look", "@room look"),
    ("x", '<img src="mxc://a/b" alt="party" data-mx-emoticon>', ":party:"),
    ("x", '<span data-mx-spoiler>secret</span> <font color="red">red</font> <u>u</u>',
     "secret red u"),
    ("x", "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>",
     "a | b\n1 | 2"),
    ("x", "<script>alert(1)</script>ok", "ok"),
    ("x", "<!-- comment -->ok", "ok"),
    ("x", "a &amp; b &lt; c", "a &amp; b &lt; c"),
    ("x", "  lots   of\n\n  space  ", "lots of space"),
    # Reply fallbacks (MSC2781 removed them; older clients still send them).
    ("> <@bob:example.org> earlier\n> more\n\nmy answer",
     "<mx-reply><blockquote><a href=\"https://matrix.to/#/@bob:example.org\">bob</a>"
     "<br>earlier</blockquote></mx-reply>my <b>answer</b>",
     "my *answer*"),
    ("> <@bob:example.org> earlier\n> more\n\nmy answer", None, "my answer"),
    ("> * <@bob:example.org> waves\n\nhi", None, "hi"),
    ("> a quote I typed\n\nreply", None, "&gt; a quote I typed\n\nreply"),
    # A ">" typed as text in a formatted message must not become a Slack quote.
    ("x", "&gt;_&lt; oops<br>&gt; not a quote", "\u200b&gt;_&lt; oops\n\u200b&gt; not a quote"),
    ("fallback body", "<mx-reply><blockquote>only the reply</blockquote></mx-reply>",
     "fallback body"),
    ("body wins", "", "body wins"),
]


@pytest.mark.parametrize(("body", "html", "mrkdwn"), MATRIX_CASES)
def test_matrix_to_slack(body: str, html: str | None, mrkdwn: str) -> None:
    assert matrix_to_slack(body, html, MatrixSide()) == mrkdwn


def test_emote_is_italic() -> None:
    assert emote_to_slack("waves", None, MatrixSide()) == "_waves_"
    assert emote_to_slack("x", "waves at <b>you</b>", MatrixSide()) == "_waves at *you*_"


# ----------------------------------------------------------------------------------------
# Emoji for reactions
# ----------------------------------------------------------------------------------------

SLACK_EMOJI_CASES = [
    ("smile", "😄"),
    ("+1", "👍"),
    ("thumbsup", "👍"),
    ("-1", "👎"),
    ("simple_smile", "🙂"),
    ("slightly_smiling_face", "🙂"),
    ("heart", "❤️"),
    ("tada", "🎉"),
    ("white_check_mark", "✅"),
    ("flag-de", "🇩🇪"),
    ("us", "🇺🇸"),
    ("man-shrugging", "🤷\u200d♂️"),
    ("+1::skin-tone-2", "👍🏻"),
    ("+1::skin-tone-3", "👍🏼"),
    ("+1::skin-tone-4", "👍🏽"),
    ("+1::skin-tone-5", "👍🏾"),
    ("+1::skin-tone-6", "👍🏿"),
    (":wave::skin-tone-5:", "👋🏾"),
    ("point_up::skin-tone-2", "☝🏻"),
    ("people_holding_hands::skin-tone-3", "🧑🏼\u200d🤝\u200d🧑🏼"),
    ("smile::skin-tone-3", "😄"),
    ("skin-tone-4", "🏽"),
    ("partyparrot", None),
    ("", None),
    ("::skin-tone-2", None),
]


@pytest.mark.parametrize(("name", "expected"), SLACK_EMOJI_CASES)
def test_slack_emoji_to_unicode(name: str, expected: str | None) -> None:
    assert slack_emoji_to_unicode(name) == expected


UNICODE_EMOJI_CASES = [
    ("👍", "+1"),
    ("👎", "-1"),
    ("👍🏽", "+1::skin-tone-4"),
    ("👍🏻", "+1::skin-tone-2"),
    ("❤️", "heart"),
    ("❤", "heart"),
    ("🙂", "slightly_smiling_face"),
    ("😄", "smile"),
    ("🎉", "tada"),
    ("🇩🇪", "flag-de"),
    ("☝🏼", "point_up::skin-tone-3"),
    ("🧑🏻\u200d🤝\u200d🧑🏿", "people_holding_hands::skin-tone-2-6"),
    ("🏽", "skin-tone-4"),
    (":partyparrot:", "partyparrot"),
    (":+1::skin-tone-3:", "+1::skin-tone-3"),
    # Not an emoji Slack could know: the caller skips the reaction.
    ("hello", None),
    ("+1", None),
    ("👍👍", None),
    (":not valid:", None),
    ("", None),
]


@pytest.mark.parametrize(("key", "expected"), UNICODE_EMOJI_CASES)
def test_unicode_to_slack_emoji(key: str, expected: str | None) -> None:
    assert unicode_to_slack_emoji(key) == expected


@pytest.mark.parametrize(
    "name",
    ["+1", "smile", "heart", "tada", "eyes", "fire", "rocket", "100", "pray", "joy", "clap",
     "white_check_mark", "x", "wave::skin-tone-3", "raised_hands::skin-tone-6", "flag-fr"],
)
def test_reaction_names_round_trip(name: str) -> None:
    char = slack_emoji_to_unicode(name)
    assert char is not None
    assert slack_emoji_to_unicode(unicode_to_slack_emoji(char) or "") == char


# ----------------------------------------------------------------------------------------
# Round trip: Matrix HTML -> mrkdwn -> Matrix keeps what Slack can express
# ----------------------------------------------------------------------------------------

Run = tuple[str, frozenset[str], str | None]
_STYLE_OF = {"strong": "b", "b": "b", "em": "i", "i": "i", "del": "s", "s": "s", "code": "c"}


def runs(html: str | None, body: str) -> list[Run]:
    """Text runs with their styles and link target, whitespace-only runs dropped."""
    if html is None:
        return [(w, frozenset(), None) for w in body.split()]
    out: list[Run] = []

    def walk(el: Any, styles: frozenset[str], href: str | None) -> None:
        if el.text:
            out.extend((w, styles, href) for w in el.text.split())
        for child in el:
            style = _STYLE_OF.get(child.tag)
            walk(child, styles | {style} if style else styles,
                 child.get("href") if child.tag == "a" else href)
            if child.tail:
                out.extend((w, styles, href) for w in child.tail.split())

    walk(lxml.html.fragment_fromstring(html, create_parent="div"), frozenset(), None)
    return out


words = st.text(alphabet="abcxyzÄé09&<>'\"!?,", min_size=1, max_size=8).filter(
    lambda w: any(c.isalnum() for c in w)
)


@st.composite
def segment(draw: Any) -> str:
    kind = draw(st.sampled_from(["word", "styled", "code", "link", "mention", "room"]))
    word = draw(words)
    escaped = word.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if kind == "word":
        return escaped
    if kind == "code":
        return f"<code>{escaped}</code>"
    if kind == "mention":
        return pill(ALICE, "Alice")
    if kind == "room":
        return f'<a href="https://matrix.to/#/{ROOM}">#general</a>'
    inner = escaped
    if kind == "link":
        path = draw(st.from_regex(r"[a-z0-9_]{1,6}", fullmatch=True))
        inner = f'<a href="https://example.org/{path}">{escaped}</a>'
    tags = draw(st.lists(st.sampled_from(["b", "em", "del", "code"]), unique=True))
    # Slack code spans hold no styles and no links, so code can only be innermost.
    if "code" in tags:
        tags.remove("code")
        if kind != "link":
            tags.insert(0, "code")
    for tag in tags:
        inner = f"<{tag}>{inner}</{tag}>"
    return inner


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(segment(), min_size=1, max_size=6))
def test_round_trip_keeps_styles_links_and_mentions(segments: list[str]) -> None:
    html = " ".join(segments)
    mrkdwn = matrix_to_slack("fallback", html, MatrixSide())
    back = to_matrix(mrkdwn)
    expected = [
        (w, s, ALICE if h and ALICE in h else h) for w, s, h in runs(html, "")
    ]
    got = [(w, s, ALICE if h and ALICE in h else h) for w, s, h in runs(back.html, back.body)]
    # "#general" reaches Slack as <#C1> and comes back as the same room link.
    assert [(w, s, h.replace("%3A", ":") if h else h) for w, s, h in got] == expected, mrkdwn
    if any("alice" in s for s in segments):
        assert back.mentions == [ALICE]


# ----------------------------------------------------------------------------------------
# Real samples from Slack's SDKs (read from ../shared; never copied into this repository)
# ----------------------------------------------------------------------------------------


def sample_messages() -> list[tuple[str, dict[str, Any]]]:
    files = sorted((SHARED / "bolt-python" / "events").glob("*.json"))
    files.append(SHARED / "java-slack-sdk" / "events" / "MessagePayload.json")
    found: list[tuple[str, dict[str, Any]]] = []
    for path in files:
        if not path.is_file():
            continue
        event = json.loads(path.read_text()).get("event") or {}
        for name, message in (
            ("event", event),
            ("message", event.get("message")),
            ("previous_message", event.get("previous_message")),
        ):
            if isinstance(message, dict) and ("text" in message or "blocks" in message):
                found.append((f"{path.name}:{name}", message))
    return found


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"Slack fixtures not found at {SHARED}")
def test_real_samples_render() -> None:
    samples = sample_messages()
    assert len(samples) >= 10
    for allow in (False, True):
        for name, message in samples:
            blocks = message.get("blocks")
            result = slack_to_matrix(
                message.get("text") or "", blocks if isinstance(blocks, list) else None,
                SlackSide(allow),
            )
            assert_safe_html(result.html)
            assert "<@U" not in (result.html or ""), name
            assert "<@W" not in (result.html or ""), name
            assert result.body.strip() or not (message.get("text") or "").strip(), name


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"Slack fixtures not found at {SHARED}")
def test_real_sample_mention_becomes_pill() -> None:
    path = SHARED / "bolt-python" / "events" / "event_app_mention.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    event = json.loads(path.read_text())["event"]
    result = slack_to_matrix(event["text"], event.get("blocks"), SlackSide())
    assert result.mentions == ["@slack_w111:example.org"]
    assert result.body == "Wanda Hi there!"


# ----------------------------------------------------------------------------------------
# Properties: nothing crashes, nothing unsafe comes out
# ----------------------------------------------------------------------------------------

mrkdwn_text = st.lists(
    st.one_of(
        st.sampled_from([
            *"*_~`<>|@#!^:&;-•◦1. \n\t",
            "&gt;", "&lt;", "&amp;", "```", "<@U1>", "<!here>", "<#C1>", ":smile:",
            "::skin-tone-3:", "<https://x.org|", "javascript:", "<script>", "\U000f0001",
            "\u200b&gt;",
        ]),
        st.text(max_size=3),
    ),
    max_size=40,
).map("".join)

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10),
                      st.sampled_from(["rich_text", "rich_text_section", "rich_text_list",
                                       "rich_text_quote", "rich_text_preformatted", "text",
                                       "link", "user", "emoji", "broadcast", "section",
                                       "mrkdwn", "javascript:alert(1)", "U1", "1f604"]))
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["type", "elements", "text", "style", "url", "user_id", "name",
                             "unicode", "skin_tone", "range", "indent", "offset", "fields",
                             "bold", "code", "channel_id", "timestamp", "fallback"]),
            children, max_size=5),
    ),
    max_leaves=25,
)

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(mrkdwn_text, st.booleans())
def test_any_mrkdwn_renders_safely(value: str, allow: bool) -> None:
    result = slack_to_matrix(value, None, SlackSide(allow))
    assert_safe_html(result.html)
    assert result.room_mention is False or allow


@PROPERTY_SETTINGS
@given(st.lists(json_value, max_size=3), st.text(max_size=20))
def test_any_blocks_render_safely(blocks: list[Any], value: str) -> None:
    result = slack_to_matrix(value, blocks, SlackSide(True))  # type: ignore[arg-type]
    assert_safe_html(result.html)


@PROPERTY_SETTINGS
@given(st.lists(
    st.fixed_dictionaries({
        "type": st.sampled_from(["text", "link", "user", "emoji", "broadcast", "channel"]),
        "text": st.text(max_size=12),
        "url": st.sampled_from(["https://x.org", "javascript:alert(1)", "data:x", " http://a"]),
        "user_id": st.sampled_from(["U1", "U2", "U9", ""]),
        "name": st.sampled_from(["smile", "+1", "nope", ""]),
        "skin_tone": st.integers(-1, 8),
        "unicode": st.sampled_from(["1f604", "zz", "110000", ""]),
        "style": st.fixed_dictionaries({"bold": st.booleans(), "code": st.booleans()}),
    }), max_size=6))
def test_rich_text_elements_render_safely(elements: list[dict[str, Any]]) -> None:
    blocks = rich(section(*elements), {"type": "rich_text_quote", "elements": elements},
                  {"type": "rich_text_preformatted", "elements": elements})
    result = slack_to_matrix("", blocks, SlackSide(True))
    assert_safe_html(result.html)


html_soup = st.lists(
    st.one_of(
        st.text(max_size=10),
        st.sampled_from([
            "<b>", "</b>", "<i>", "</i>", "<code>", "</code>", "<pre>", "</pre>", "<ul>",
            "<li>", "</ul>", "<ol start='x'>", "<blockquote>", "</blockquote>", "<br>", "<p>",
            "</p>", "<mx-reply>", "</mx-reply>", '<a href="https://matrix.to/#/@alice:example.org">',
            '<a href="javascript:x">', "</a>", "<img alt=':x:'>", "&amp;", "&lt;", "<!--",
            "<table><tr><td>", "\x00", "<h1>", "<del>",
        ]),
    ),
    max_size=20,
).map("".join)


@PROPERTY_SETTINGS
@given(st.text(max_size=40), st.one_of(st.none(), html_soup, st.text(max_size=40)))
def test_any_matrix_message_converts(body: str, html: str | None) -> None:
    out = matrix_to_slack(body, html, MatrixSide())
    assert isinstance(out, str)
    assert "<!channel>" not in out and "<!here>" not in out and "<!everyone>" not in out


@PROPERTY_SETTINGS
@given(st.text(max_size=12))
def test_any_emoji_key_or_name(value: str) -> None:
    slack_emoji_to_unicode(value)
    name = unicode_to_slack_emoji(value)
    assert name is None or (name and " " not in name)


def test_deep_nesting_does_not_recurse_forever() -> None:
    assert matrix_to_slack("x", "<b><i>" * 3000 + "deep", MatrixSide())
    assert to_matrix("*_~" * 3000 + "x" + "~_*" * 3000).body
    nested: dict[str, Any] = {"type": "rich_text", "elements": []}
    for _ in range(500):
        nested = {"type": "rich_text", "elements": [nested]}
    assert slack_to_matrix("fallback", [nested], SlackSide()).body == "fallback"


# ----------------------------------------------------------------------------------------
# Speed: the connector's benchmark pushes hundreds of messages a second through these
# ----------------------------------------------------------------------------------------


def test_no_input_makes_the_formatters_backtrack() -> None:
    """Pathological input (thousands of markers) must not take the regexes exponential
    time. CPU time of this process, with a bound far above the normal 0.1 s, so a busy
    machine cannot fail it; speed itself is measured by bench/."""
    mrkdwn = (
        "*Release* <@U1> shipped _v2_ :tada: see <https://example.org/notes|the notes>\n"
        "• fixed `bug_1`\n• faster ~slow~ paths\n&gt; quote from <#C1>"
    )
    html = (
        f'<p><b>Release</b> {pill(ALICE, "Alice")} shipped <em>v2</em> 🎉 see '
        '<a href="https://example.org/notes">the notes</a></p>'
        "<ul><li>fixed <code>bug_1</code></li><li>faster <del>slow</del> paths</li></ul>"
        "<blockquote>quote</blockquote>"
    )
    long_line = "word *bold* _it_ " * 500
    start = time.process_time()
    for _ in range(300):
        to_matrix(mrkdwn)
        matrix_to_slack("x", html, MatrixSide())
    to_matrix(long_line)
    to_matrix("*x " * 5000)
    elapsed = time.process_time() - start
    assert elapsed < 10, f"{elapsed:.2f} s of CPU for 300 messages each way"


# What the HTML escapes were written as: a translation table (control characters dropped).
_CONTROL_CHARACTERS = {chr(c): None for c in (*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)}
_AS_TRANSLATED = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", **_CONTROL_CHARACTERS})
_ATTR_AS_TRANSLATED = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                     **_CONTROL_CHARACTERS})
_escapable = st.text(alphabet=st.sampled_from(
    "aäß€😀 &<>\"'\t\n\r\x00\x01\x07\x0b\x0c\x1f\x7f\x80\u200b") | st.characters(), max_size=40)


@given(_escapable)
def test_the_html_escapes_are_the_translation_tables(text: str) -> None:
    """escape_html and escape_attr (replace chains, for speed) escape and drop exactly what
    their translation tables did; so does the escaping of text for Slack."""
    assert escape_html(text) == text.translate(_AS_TRANSLATED)
    assert escape_attr(text) == text.translate(_ATTR_AS_TRANSLATED)
    assert _slack_escape(text) == text.translate(str.maketrans(
        {"&": "&amp;", "<": "&lt;", ">": "&gt;"}))
