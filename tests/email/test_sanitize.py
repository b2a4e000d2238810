"""The HTML sanitiser and the HTML-to-text conversion."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.email.html_allow_lists import MATRIX_ATTRIBUTES, MATRIX_TAGS
from bridge.email.sanitize import html_to_text, sanitize_html

CIDS = {"logo@stadt.example": "mxc://stadt.example/logo"}


@pytest.mark.parametrize(("html", "expected"), [
    ('<p onclick="x()">Hallo <b>Welt</b><script>alert(1)</script></p>', "<p>Hallo <b>Welt</b></p>"),
    ("<style>p {color: red}</style><p>Text</p>", "<p>Text</p>"),
    ("<html><head><title>Titel</title></head><body><p>Inhalt</p></body></html>",
     "<p>Inhalt</p>"),
    ('<iframe src="https://evil.example">drin</iframe>ok', "ok"),
    ('<object data="x.swf">alt</object><embed src="x.swf">ok', "ok"),
    ('<a href="javascript:alert(1)">x</a>', '<a rel="noopener">x</a>'),
    ('<a href="JaVaScRiPt:alert(1)">x</a>', '<a rel="noopener">x</a>'),
    ('<a href="java&#x09;script:alert(1)">x</a>', '<a rel="noopener">x</a>'),
    ('<a href="data:text/html;base64,PHNjcmlwdD4=">x</a>', '<a rel="noopener">x</a>'),
    ('<a href="vbscript:msgbox">x</a>', '<a rel="noopener">x</a>'),
    ('<a href="/relative">x</a>', '<a rel="noopener">x</a>'),
    ('<a href="https://matrix.to/#/@max:stadt.example" target="_blank">Max</a>',
     '<a href="https://matrix.to/#/@max:stadt.example" target="_blank" rel="noopener">Max</a>'),
    ('<a href="mailto:poststelle@stadt.example">Poststelle</a>',
     '<a href="mailto:poststelle@stadt.example" rel="noopener">Poststelle</a>'),
    ('<a href="https://stadt.example" rel="opener" style="color:red">x</a>',
     '<a href="https://stadt.example" rel="noopener">x</a>'),
    ('<code class="language-python hljs">x = 1</code>',
     '<code class="language-python">x = 1</code>'),
    ('<code class="evil">x</code>', "<code>x</code>"),
    ('<font color="#ff0000" face="Arial" size="3">rot</font>', '<font color="#ff0000">rot</font>'),
    ('<font color="red">rot</font>', "<font>rot</font>"),
    ('<span data-mx-color="#00ff00" data-mx-bg-color="#000000" style="x">g</span>',
     '<span data-mx-color="#00ff00" data-mx-bg-color="#000000">g</span>'),
    ('<ol start="3" type="a"><li>drei</li></ol>', '<ol start="3"><li>drei</li></ol>'),
    ("<table><thead><tr><th>A</th></tr></thead><tbody><tr><td>1</td></tr></tbody></table>",
     "<table><thead><tr><th>A</th></tr></thead><tbody><tr><td>1</td></tr></tbody></table>"),
    ("<details><summary>Zitat</summary>alt</details>",
     "<details><summary>Zitat</summary>alt</details>"),
    ("<center>Mitte</center><dl><dt>Begriff</dt><dd>Erklärung</dd></dl>",
     "<div>Mitte</div><div><div>Begriff</div><div>Erklärung</div></div>"),
    ('<p class="MsoNormal" id="x" lang="de">Outlook<o:p></o:p></p>', "<p>Outlook</p>"),
    ("<!-- Kommentar --><!--[if mso]><p>nur Outlook</p><![endif]-->Text", "Text"),
    ("Text mit javascript: und onerror=1", "Text mit javascript&#58; und onerror&#61;1"),
    ("&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;script&gt;alert(1)&lt;/script&gt;"),
    ("", ""),
])
def test_sanitize_html(html: str, expected: str) -> None:
    assert sanitize_html(html) == expected


@pytest.mark.parametrize(("html", "expected"), [
    # Inline images the connector uploaded: cid -> mxc.
    ('<img src="cid:logo@stadt.example" alt="Logo" width="120" onerror="x">',
     '<img src="mxc://stadt.example/logo" alt="Logo" width="120">'),
    ('<img src="cid:%3Clogo@stadt.example%3E">', '<img src="mxc://stadt.example/logo">'),
    ('<img src="CID:LOGO@stadt.example" alt="L">', '<img src="mxc://stadt.example/logo" alt="L">'),
    # Unknown cid: its alt text, or a placeholder.
    ('<img src="cid:unbekannt@x" alt="Unterschrift">', "Unterschrift"),
    ('<img src="cid:unbekannt@x">', "[image]"),
    # Remote images never load: a link instead, and tracking pixels vanish.
    ('<img src="https://stadt.example/plan.png" alt="Plan">',
     '<a href="https://stadt.example/plan.png" rel="noopener">Plan</a>'),
    ('<img src="http://tracker.example/p.gif" width="1" height="1">', ""),
    ('<img src="http://tracker.example/p.gif" width="1px" height="1px">', ""),
    ('<a href="https://stadt.example"><img src="https://stadt.example/b.png" alt="Banner"></a>',
     '<a href="https://stadt.example" rel="noopener">Banner</a>'),
    ('<img src="data:image/png;base64,AAAA" alt="eingebettet">', "eingebettet"),
    ('<img src="javascript:alert(1)">', "[image]"),
    ('<img alt="ohne Quelle">', "ohne Quelle"),
    ('<img src="cid:logo@stadt.example" alt="&quot;&gt;<script>">',
     '<img src="mxc://stadt.example/logo" alt="&quot;&gt;&lt;script&gt;">'),
])
def test_images(html: str, expected: str) -> None:
    assert sanitize_html(html, CIDS) == expected


def test_cid_map_values_must_be_mxc() -> None:
    assert sanitize_html('<img src="cid:x" alt="X">', {"x": "https://evil.example/x"}) == "X"


@pytest.mark.parametrize(("html", "expected"), [
    ("<p>Hallo <b>Welt</b></p><p>Zweiter   Absatz</p>", "Hallo Welt\n\nZweiter Absatz"),
    ('<p>Siehe <a href="https://stadt.example/plan">Plan</a></p>',
     "Siehe [Plan](https://stadt.example/plan)"),
    ('<a href="https://stadt.example">https://stadt.example</a>', "https://stadt.example"),
    ('<a href="mailto:a@stadt.example">a@stadt.example</a>', "a@stadt.example"),
    ("<ul><li>eins</li><li>zwei</li></ul>", "* eins\n  * zwei"),
    ("<script>alert(1)</script><style>p{}</style><p>nur das</p>", "nur das"),
    ("<div><div><div>tief</div></div></div>", "tief"),
    ("Fa&szlig; &amp; Gr&uuml;&szlig;e&nbsp;!", "Faß & Grüße !"),
    ("<p>oben</p><hr><p>unten</p>", "oben\n\nunten"),
    ("", ""),
    ("   ", ""),
    ("<", "<"),
])
def test_html_to_text(html: str, expected: str) -> None:
    assert html_to_text(html) == expected


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TAGS = ["script", "style", "img", "a", "iframe", "svg", "math", "object", "embed", "body",
        "title", "textarea", "noscript", "template", "xmp", "plaintext", "p", "div", "b",
        "table", "td", "font", "span", "code", "form", "input", "base", "meta", "link",
        "video", "audio", "source", "details", "SCRIPT", "ScRiPt", "scr\x00ipt", "o:p"]
ATTRS = ["onerror", "onload", "onclick", "ONLOAD", "onmouseover", "href", "src", "style",
         "srcdoc", "formaction", "xlink:href", "data-mx-color", "color", "class", "action",
         "background", "dynsrc", "lowsrc"]
VALUES = ["javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:alert(1)",
          "java\tscript:alert(1)", "java&#x09;script:x", "&#106;avascript:x",
          "&#x6A;avascript:x", "data:text/html,<script>alert(1)</script>", "vbscript:x",
          "cid:logo@stadt.example", "https://stadt.example/x.png", "mxc://a/b", "#ff0000",
          "expression(alert(1))", "x\" onerror=\"alert(1)", "'><script>alert(1)</script>",
          "1", "", "onload=alert(1)"]


@st.composite
def attribute(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(ATTRS))
    value = draw(st.one_of(st.sampled_from(VALUES), st.text(max_size=20)))
    quote = draw(st.sampled_from(['"', "'", ""]))
    return f" {name}={quote}{value}{quote}"


def element(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    @st.composite
    def build(draw: st.DrawFn) -> str:
        tag = draw(st.sampled_from(TAGS))
        attrs = "".join(draw(st.lists(attribute(), max_size=3)))
        inner = "".join(draw(st.lists(children, max_size=3)))
        closing = draw(st.sampled_from([f"</{tag}>", "", f"</{tag} >", "<!--"]))
        return f"<{tag}{attrs}>{inner}{closing}"
    return build()


LEAVES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["<script>alert(1)</script>", "<!-- x -->", "<![CDATA[<script>]]>",
                     "&lt;script&gt;", "<", ">", "&", "<scr<script>ipt>", "</script>",
                     "<img/src=x/onerror=alert(1)>", "<svg/onload=alert(1)>",
                     "<a href=javascript:alert(1)>", "<style>@import 'x';</style>",
                     "<math><mi xlink:href=javascript:alert(1)>x</mi></math>"]),
)
HTMLISH = st.recursive(LEAVES, element, max_leaves=25)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def assert_safe(output: str) -> None:
    lowered = output.lower()
    for needle in ("<script", "javascript:", "onerror=", "onload=", "<style", "vbscript:"):
        assert needle not in lowered, (needle, output)
    collector = _Collector()
    collector.feed(output)
    collector.close()
    for tag, attrs in collector.tags:
        assert tag in MATRIX_TAGS, tag
        for name, value in attrs:
            assert name in MATRIX_ATTRIBUTES.get(tag, frozenset()) or (
                tag == "a" and name == "rel"), (tag, name)
            if name == "href":
                assert (value or "").lower().startswith(("http:", "https:", "mailto:")), value
            if name == "src":
                assert (value or "").startswith("mxc://"), value


@PROPERTY
@given(HTMLISH)
def test_sanitize_html_ish(html: str) -> None:
    assert_safe(sanitize_html(html, CIDS))
    assert isinstance(html_to_text(html), str)


@PROPERTY
@given(st.text(max_size=300))
def test_sanitize_arbitrary_text(text: str) -> None:
    assert_safe(sanitize_html(text))
    assert isinstance(html_to_text(text), str)


@PROPERTY
@given(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3), HTMLISH)
def test_sanitize_with_arbitrary_cid_map(cid_map: dict[str, str], html: str) -> None:
    assert_safe(sanitize_html(html, cid_map))
