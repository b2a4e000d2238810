"""The HTML allow-lists of both directions of the email connector, in one place.

Mail -> Matrix (`bridge.email.sanitize`) keeps what the Matrix spec recommends clients
render; Matrix -> mail (`bridge.email.compose`) keeps the same tags, but only attributes that
can neither load anything nor restyle the mail. What each direction removes *with its
content* differs on purpose: a mail's <form> keeps its text in the room, a Matrix
``<mx-reply>`` fallback never reaches a mail.
"""

from __future__ import annotations

import re

__all__ = [
    "DROP_WITH_CONTENT_FROM_MAIL",
    "DROP_WITH_CONTENT_TO_MAIL",
    "HEX_COLOR",
    "LINK_SCHEMES",
    "MAIL_ATTRIBUTES",
    "MATRIX_ATTRIBUTES",
    "MATRIX_TAGS",
]

# The Matrix spec's recommended tag list (client-server API, "m.room.message msgtypes",
# formatted_body), including the deprecated font and strike that older clients still send.
MATRIX_TAGS: frozenset[str] = frozenset({
    "font", "del", "s", "strike", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "p", "a",
    "ul", "ol", "sup", "sub", "li", "b", "i", "u", "strong", "em", "code", "hr", "br", "div",
    "table", "thead", "tbody", "tr", "th", "td", "caption", "pre", "span", "img", "details",
    "summary",
})

# The spec's attributes per tag: what a mail's HTML keeps in the room.
MATRIX_ATTRIBUTES: dict[str, frozenset[str]] = {
    "font": frozenset({"data-mx-bg-color", "data-mx-color", "color"}),
    "span": frozenset({"data-mx-bg-color", "data-mx-color", "data-mx-spoiler", "data-mx-maths"}),
    "div": frozenset({"data-mx-maths"}),
    "a": frozenset({"name", "target", "href"}),
    "img": frozenset({"width", "height", "alt", "title", "src"}),
    "ol": frozenset({"start"}),
    "code": frozenset({"class"}),
}

# What of a room member's HTML goes into the mail: an allow-list (never a deny-list, which
# misses the next way to load a URL). The Matrix tag list; attributes that can neither load
# anything nor restyle the mail (no style, background, srcset, poster, ...). <img> passes
# only to be turned into a link or its text; no mail carries an image of a member's
# choosing, so nobody can make every subscriber's mail client fetch a URL.
MAIL_ATTRIBUTES: dict[str, set[str]] = {
    "*": set(),
    "font": {"data-mx-bg-color", "data-mx-color"},
    "span": {"data-mx-bg-color", "data-mx-color"},
    "a": {"href"},
    "img": {"src", "alt", "title"},
    "ol": {"start"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
}

# Mail -> Matrix: elements whose *content* must vanish too, not just the tags: code,
# styling, embedded documents, and the <title>/<xml> blocks that Outlook puts in <head>.
DROP_WITH_CONTENT_FROM_MAIL: frozenset[str] = frozenset({
    "script", "style", "iframe", "object", "embed", "applet", "noscript", "noembed",
    "noframes", "template", "title", "xml", "svg", "math", "head", "frameset", "frame",
    "textarea", "select", "button",
})

# Matrix -> mail: removed with their content. The Matrix side has sanitised the HTML
# already; this is a second line of defence and removes what makes no sense in a mail.
# mx-reply is the reply fallback (a quote of the replied-to message) that Matrix clients
# are told to strip.
DROP_WITH_CONTENT_TO_MAIL: frozenset[str] = frozenset({
    "mx-reply", "script", "style", "iframe", "frame", "frameset", "object", "embed", "applet",
    "link", "meta", "base", "form", "input", "button", "select", "textarea", "noscript",
    "template", "svg", "math", "head", "title",
})

# Link targets a reader can follow, in both directions (matrix.to links are https).
LINK_SCHEMES = ("http:", "https:", "mailto:")
# The only colour form the Matrix spec allows (data-mx-color, data-mx-bg-color).
HEX_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
