"""Mail text decoded whatever charset it claims: `decode_text` uses a declared charset where it
fits, reads mislabelled UTF-8 as UTF-8 and falls back to windows-1252, after mapping the
labels Python does not know (or knows as narrower than mail clients mean); `_fix_surrogates`
does the same for the raw 8-bit bytes the email package leaves in headers as surrogates.
"""

from __future__ import annotations

import codecs
import contextlib
import re

# Labels that Python does not know, or knows as a narrower charset than mail clients mean.
# ASCII and Latin-1 labels decode as windows-1252, as browsers do: the extra characters
# (euro sign, German quotes, dashes) are what Outlook actually sends under those labels,
# and the bytes 0x80-0x9f are never C1 controls in real text.
_CHARSET_ALIASES = {
    "us-ascii": "cp1252", "ascii": "cp1252", "ansi_x3.4-1968": "cp1252", "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252", "iso_8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "l1": "cp1252", "cp819": "cp1252", "ibm819": "cp1252", "iso-ir-100": "cp1252",
    "windows-1252": "cp1252", "x-cp1252": "cp1252", "iso-8859-9": "cp1254",
    "unicode-1-1-utf-7": "utf-7", "x-unicode-2-0-utf-7": "utf-7", "utf7": "utf-7",
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "euc-kr": "cp949", "x-windows-949": "cp949",
    "iso-8859-8-i": "iso-8859-8", "iso-8859-8-e": "iso-8859-8", "iso-8859-6-i": "iso-8859-6",
    "iso-8859-6-e": "iso-8859-6", "x-mac-cyrillic": "mac-cyrillic", "x-mac-roman": "mac-roman",
    "macintosh": "mac-roman", "x-mac-greek": "mac-greek", "x-mac-turkish": "mac-turkish",
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030",
    "euc-cn": "gb18030", "big5": "big5hkscs", "x-big5": "big5hkscs", "shift_jis": "cp932",
    "shift-jis": "cp932", "x-sjis": "cp932", "sjis": "cp932", "windows-31j": "cp932",
    "x-euc-jp": "euc-jp", "iso-2022-jp": "iso2022_jp_ext", "utf8": "utf-8",
}
# Labels that say "we do not know" — treated exactly like a missing charset.
_UNKNOWN_CHARSETS = {
    "unknown-8bit", "x-unknown", "unknown", "x-user-defined", "default", "none", "charset",
    "8bit", "binary", "",
}
# Python codecs that are not character sets and must never be applied to mail.
_NOT_CHARSETS = {
    "unicode-escape", "unicode_escape", "raw-unicode-escape", "raw_unicode_escape", "idna",
    "punycode", "undefined", "mbcs", "oem",
}
# Multi-byte charsets where a few bad bytes should not throw away the whole declaration.
_LENIENT = ("utf-16", "utf-32", "cp932", "euc", "iso2022", "gb18030", "big5", "cp949", "utf-7",
            "hz", "johab", "shift_jis")

# windows-1252 leaves five bytes undefined; mapping them to Latin-1 makes it total.
_CP1252_TABLE = {b: bytes([b]).decode("cp1252", "ignore") or chr(b) for b in range(0x80, 0xA0)}
_LATIN1_TO_CP1252 = str.maketrans({chr(b): ch for b, ch in _CP1252_TABLE.items()})


def _codec_for(label: str | None) -> str | None:
    if not label:
        return None
    name = label.strip().strip("\"'").lower()
    if name.startswith("charset="):  # seen in the wild: charset=charset=us-ascii
        name = name[len("charset="):]
    if name in _UNKNOWN_CHARSETS:
        return None
    name = _CHARSET_ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if info.name in _NOT_CHARSETS:
        return None
    # Only text encodings (not base64_codec, zlib_codec, rot13 …).
    if getattr(info, "_is_text_encoding", True) is False:
        return None
    return info.name


def _decode_cp1252(data: bytes) -> str:
    return data.decode("latin-1").translate(_LATIN1_TO_CP1252)


def decode_text(data: bytes, charset: str | None) -> str:
    """Decode mail bytes: the declared charset if it fits, else UTF-8, else windows-1252.

    Never raises. A correct declaration always wins; a wrong one (UTF-8 declared, cp1252
    bytes sent) or a missing/unknown one falls back without producing mojibake for the
    usual German umlauts, because windows-1252 is tried only after strict UTF-8 failed.
    Bytes that are valid UTF-8 are read as UTF-8 even under a single-byte label (koi8-r,
    x-mac-cyrillic, windows-1252 …): mislabelled UTF-8 is common, while 8-bit text that
    happens to be valid UTF-8 is not.
    """
    codec = _codec_for(charset)
    if codec and not codec.startswith("utf") and not codec.startswith(_LENIENT) \
            and not data.isascii():
        # A single-byte label on bytes that are valid UTF-8 is a wrong label: real 8-bit
        # text (German umlauts next to ASCII letters) is practically never valid UTF-8.
        with contextlib.suppress(UnicodeDecodeError):
            return data.decode("utf-8")
    if codec:
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError, ValueError):
            pass
    if codec != "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec and codec.startswith(_LENIENT):
        with contextlib.suppress(UnicodeDecodeError, LookupError, ValueError):
            return data.decode(codec, "replace")
    return _decode_cp1252(data)


_SURROGATES = re.compile("[\ud800-\udfff]")


def _fix_surrogates(text: str, hint: str | None = None) -> str:
    """Undo the email package's surrogateescape of raw 8-bit header bytes.

    UTF-8 first (RFC 6532 allows it in headers), then `hint` (the charset the sender
    declared for its text), then windows-1252.
    """
    if not _SURROGATES.search(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # other lone surrogates: not from bytes, just drop them
        return text.encode("utf-8", "replace").decode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return decode_text(raw, hint)
