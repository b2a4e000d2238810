"""HTML from mail made safe for Matrix, and HTML turned into readable text.

Mail HTML is hostile input: scripts, event handlers, ``javascript:`` links, tracking pixels
and the Office markup of every Outlook version. `sanitize_html` keeps only the subset of
HTML that the Matrix spec recommends clients render (``m.room.message`` ``formatted_body``),
using nh3 (the Rust ammonia sanitiser), so the parsing is a real HTML5 parser, not regexes.

Images get special care because loading them is a privacy leak (tracking pixels) and Matrix
clients only load ``mxc://`` URIs anyway: inline ``cid:`` images become the ``mxc://`` URI
that the connector uploaded them to, remote images become plain links.
"""

from __future__ import annotations

import html as html_lib
import logging
import re
from collections.abc import Mapping
from urllib.parse import unquote

import nh3
from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.html_engine import Inscriptis
from inscriptis.html_properties import Display
from inscriptis.model.config import ParserConfig
from inscriptis.model.html_element import HtmlElement
from lxml.etree import ParserError
from lxml.html import document_fromstring

from bridge.email.html_allow_lists import (
    DROP_WITH_CONTENT_FROM_MAIL,
    HEX_COLOR,
    LINK_SCHEMES,
    MATRIX_ATTRIBUTES,
    MATRIX_TAGS,
)
from bridge.email.text import tidy_text

log = logging.getLogger(__name__)

__all__ = ["html_to_text", "sanitize_html"]

# Block-level tags outside the Matrix list that mail clients use a lot. Mapped to a div (or
# code) before cleaning, so their content keeps its line breaks instead of running together.
_BLOCK_RENAMES = re.compile(
    r"<(/?)(center|section|article|aside|header|footer|main|nav|address|dl|dt|dd|figure|"
    r"figcaption|tfoot)(?=[\s/>])",
    re.IGNORECASE,
)
_CODE_RENAMES = re.compile(r"<(/?)(tt|kbd|samp)(?=[\s/>])", re.IGNORECASE)

_IMG_TAG = re.compile(r"<img\b[^>]*>")
_ATTR = re.compile(r'([a-zA-Z-]+)="([^"]*)"')
_A_OPEN = re.compile(r"<a\b")
_A_CLOSE = re.compile(r"</a>")
# Images this small are tracking pixels or spacers: dropped rather than turned into links.
_PIXEL_MAX = 2


def _attribute_filter(tag: str, attr: str, value: str) -> str | None:
    """Per-attribute checks that nh3's allow-lists cannot express."""
    if tag == "a" and attr == "href":
        # matrix.to links are https; cid:/mxc: only make sense on images.
        return value if value.lower().startswith(LINK_SCHEMES) else None
    if tag == "img" and attr == "src":
        return value if value.lower().startswith(("cid:", "mxc://", "http:", "https:")) else None
    if tag == "code" and attr == "class":
        # Only the spec's syntax-highlighting hint survives.
        classes = [c for c in value.split() if re.fullmatch(r"language-[A-Za-z0-9_+#.-]+", c)]
        return " ".join(classes) or None
    if attr in {"color", "data-mx-color", "data-mx-bg-color"}:
        return value if HEX_COLOR.fullmatch(value) else None
    if attr in {"start", "width", "height"}:
        value = value.strip().removesuffix("px")
        return value if value.isdigit() and len(value) <= 6 else None
    if attr == "target":
        return value if value in {"_blank", "_self", "_parent", "_top"} else None
    return value


def _final_attribute_filter(tag: str, attr: str, value: str) -> str | None:
    """Second pass: after image rewriting only mxc:// images may remain."""
    if tag == "img" and attr == "src":
        return value if value.startswith("mxc://") else None
    return _attribute_filter(tag, attr, value)


def _clean(html: str, final: bool) -> str:
    return nh3.clean(
        html,
        tags=set(MATRIX_TAGS),
        clean_content_tags=set(DROP_WITH_CONTENT_FROM_MAIL),
        # "*": no generic attributes (ammonia would otherwise allow lang and title anywhere).
        attributes={"*": set()} | {tag: set(attrs) for tag, attrs in MATRIX_ATTRIBUTES.items()},
        attribute_filter=_final_attribute_filter if final else _attribute_filter,
        strip_comments=True,
        link_rel="noopener",
        url_schemes={"http", "https", "mailto", "mxc"} | (set() if final else {"cid"}),
        # Relative links point nowhere once the mail is in a Matrix room.
        url_relative="deny",
    )


def _img_replacement(tag: str, cid_map: Mapping[str, str], inside_link: bool) -> str:
    attrs = {name.lower(): html_lib.unescape(value) for name, value in _ATTR.findall(tag)}
    src = attrs.get("src", "")
    alt = attrs.get("alt", "").strip() or attrs.get("title", "").strip()
    label = html_lib.escape(alt or "[image]", quote=False)
    if src.lower().startswith("cid:"):
        cid = unquote(src[4:]).strip().strip("<>")
        mxc = cid_map.get(cid)
        if mxc is None:
            lowered = {key.strip("<>").lower(): value for key, value in cid_map.items()}
            mxc = lowered.get(cid.lower())
        if mxc and mxc.startswith("mxc://"):
            kept = [f'src="{html_lib.escape(mxc)}"']
            for name in ("alt", "title", "width", "height"):
                if name in attrs:
                    kept.append(f'{name}="{html_lib.escape(attrs[name])}"')
            return "<img " + " ".join(kept) + ">"
        return label
    if src.startswith("mxc://"):
        return tag
    if src.lower().startswith(("http:", "https:")):
        width, height = attrs.get("width", ""), attrs.get("height", "")
        if (width.isdigit() and int(width) <= _PIXEL_MAX) or (
                height.isdigit() and int(height) <= _PIXEL_MAX):
            return ""
        if inside_link:
            # No nested links: the surrounding <a> already leads somewhere.
            return label
        return f'<a href="{html_lib.escape(src)}">{label}</a>'
    return label


def _rewrite_images(cleaned: str, cid_map: Mapping[str, str]) -> str:
    """Replace every <img> of nh3's (normalised, always double-quoted) output."""
    out: list[str] = []
    pos = 0
    depth = 0  # how many <a> elements are open at this point
    for match in _IMG_TAG.finditer(cleaned):
        before = cleaned[pos:match.start()]
        depth += len(_A_OPEN.findall(before)) - len(_A_CLOSE.findall(before))
        out.append(before)
        out.append(_img_replacement(match.group(0), cid_map, depth > 0))
        pos = match.end()
    out.append(cleaned[pos:])
    return "".join(out)


def _defang(cleaned: str) -> str:
    """Break up strings that look dangerous even where they are harmless text.

    After nh3 no script element, event handler or javascript: URL can be left; these
    strings can only remain as visible text or inside an allowed attribute's value. Writing
    one character as a character reference there changes nothing a reader sees, and lets
    anything downstream (logs, naive filters, tests) rely on their absence.
    """
    cleaned = re.sub(r"(?i)<(?=/?(?:script|style))", "&lt;", cleaned)
    cleaned = re.sub(r"(?i)(javascript|vbscript|livescript)(\s*):", r"\1\2&#58;", cleaned)
    return re.sub(r"(?i)(\bon[a-z]+)(\s*)=", r"\1\2&#61;", cleaned)


def _scrub_input(html: str) -> str:
    # Lone surrogates (from undecodable mail bytes) cannot cross into Rust.
    return html.encode("utf-8", "replace").decode("utf-8")


def sanitize_html(html: str, cid_map: Mapping[str, str] | None = None) -> str:
    """Return `html` reduced to the Matrix-safe subset; never raises.

    `cid_map` maps Content-IDs (without angle brackets) of a mail's inline parts to the
    ``mxc://`` URIs they were uploaded to.
    """
    try:
        source = _scrub_input(str(html))
        source = _BLOCK_RENAMES.sub(r"<\1div", source)
        source = _CODE_RENAMES.sub(r"<\1code", source)
        cleaned = _clean(source, final=False)
        cleaned = _rewrite_images(cleaned, cid_map or {})
        # The rewritten images are our own markup, but cleaning once more guarantees the
        # result is exactly what nh3 would let through.
        return _defang(_clean(cleaned, final=True)).strip()
    except Exception:  # pragma: no cover - defensive: nh3 is not expected to raise
        log.exception("sanitising HTML failed; falling back to escaped text")
        try:
            return _defang(html_lib.escape(html_to_text(str(html))))
        except Exception:
            return ""


# Strict profile: no indentation for nested <div>s (Outlook nests them deeply); and a rule
# (<hr>) is a line of its own, as webmail clients separate the quoted mail with one.
_TEXT_CSS = dict(CSS_PROFILES["strict"])
_TEXT_CSS["hr"] = HtmlElement(display=Display.block, margin_before=1, margin_after=1)
_TEXT_CONFIG = ParserConfig(css=_TEXT_CSS, display_links=True, display_images=True)
_SELF_LINK = re.compile(r"\[([^\]\n]{1,500})\]\((?:mailto:)?([^)\s]{1,2000})\)")


def _simplify_link(match: re.Match[str]) -> str:
    text, target = match.group(1), match.group(2)
    if text.strip() == target or text.strip() == unquote(target):
        return text
    return match.group(0)


def _inscriptis_text(source: str) -> str:
    """inscriptis on an lxml tree we prepared: Outlook's <p class="MsoNormal"> is one line
    (its CSS sets no margins), not a paragraph; read as <p> every line would be followed by a
    blank line."""
    source = re.sub(r"^\s*<\?xml[^>]*\?>", "", source.strip())  # lxml refuses str + encoding
    if not source:
        return ""
    try:
        tree = document_fromstring(source)
    except ParserError:
        return get_text(source, _TEXT_CONFIG)
    for para in tree.iter("p"):
        if "MsoNormal" in (para.get("class") or ""):
            para.tag = "div"
    for link in tree.iter("a"):
        # Shown as [text](url) only where a reader can follow it, as in `sanitize_html`:
        # "javascript:alert(1)", data: and relative links keep just their text.
        if not (link.get("href") or "").strip().lower().startswith(LINK_SCHEMES):
            link.attrib.pop("href", None)
    return Inscriptis(tree, _TEXT_CONFIG).get_text()


def html_to_text(html: str) -> str:
    """Readable plain text for `html` (links as ``[text](url)``), trimmed; never raises."""
    try:
        source = _scrub_input(str(html)).replace("\x00", "")
        # Keep the text of <dl>/<section>… on separate lines, as for sanitising.
        source = _BLOCK_RENAMES.sub(r"<\1div", source)
        text = _inscriptis_text(source)
        text = _SELF_LINK.sub(_simplify_link, text)
        # All blank space at the ends goes: the text of HTML has no meaningful indent there.
        return tidy_text(text).strip()
    except Exception:
        log.debug("inscriptis failed on a mail's HTML; stripping tags instead", exc_info=True)
        try:
            stripped = re.sub(r"(?is)<(script|style|head)\b.*?</\1\s*>", " ", str(html))
            stripped = re.sub(r"(?i)<br\s*/?>|</(p|div|li|tr|h[1-6])\s*>", "\n", stripped)
            stripped = re.sub(r"<[^>]*>", "", stripped)
            return tidy_text(html_lib.unescape(stripped)).strip()
        except Exception:
            return ""
