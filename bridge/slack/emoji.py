"""Slack emoji names to Unicode and back, for messages and reactions.

Slack names its emoji after iamcal/emoji-data, which took most of its names
from GitHub's gemoji; the ``emoji`` package carries those gemoji names as
aliases, and CLDR names (which newer Slack names follow) as its English names.
The few places where Slack differs are patched below.
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache

import emoji as _emoji_pkg

__all__ = [
    "SKIN_TONES",
    "slack_emoji_to_unicode",
    "unicode_to_slack_emoji",
]

# Slack numbers the Fitzpatrick modifiers 2..6 (types 1 and 2 share one modifier).
SKIN_TONES: dict[int, str] = {
    2: "\U0001f3fb",
    3: "\U0001f3fc",
    4: "\U0001f3fd",
    5: "\U0001f3fe",
    6: "\U0001f3ff",
}
_TONE_OF_MODIFIER = {v: k for k, v in SKIN_TONES.items()}
_ZWJ = "\u200d"
_VS16 = "\ufe0f"
_FULLY_QUALIFIED = 2

# Slack names the emoji package does not know, or knows for a different emoji.
_SLACK_EXTRA: dict[str, str] = {
    "simple_smile": "\U0001f642",
    "slightly_smiling_face": "\U0001f642",
    "white_frowning_face": "\u2639\ufe0f",
    "grinning_face_with_star_eyes": "\U0001f929",
    "serious_face_with_symbols_covering_mouth": "\U0001f92c",
    "face_with_finger_covering_closed_lips": "\U0001f92b",
    "smiling_face_with_smiling_eyes_and_hand_covering_mouth": "\U0001f92d",
    "face_with_one_eyebrow_raised": "\U0001f928",
    "shocked_face_with_exploding_head": "\U0001f92f",
    "umbrella_with_rain_drops": "\u2614",
    "knife_fork_plate": "\U0001f37d\ufe0f",
}

# The name Slack itself uses when several names map to one emoji; reactions
# echoed back from Slack carry these, so picking them keeps both sides
# agreeing on which reaction is which.
_PREFERRED: dict[str, str] = {
    "\U0001f44d": "+1",
    "\U0001f44e": "-1",
    "\U0001f642": "slightly_smiling_face",
    "\U0001f604": "smile",
    "\U0001f606": "laughing",
    "\U0001f4a9": "hankey",
    "\u2764\ufe0f": "heart",
    "\U0001f389": "tada",
    "\U0001f914": "thinking_face",
}

_SLACK_NAME_RE = re.compile(r"[a-z0-9_+'\-]+")
_REGIONAL_A = 0x1F1E6


def _flag_name(key: str) -> str | None:
    if len(key) == 2 and all(0 <= ord(c) - _REGIONAL_A < 26 for c in key):
        if key not in _emoji_pkg.EMOJI_DATA:
            return None
        # Slack knows every flag as "flag-xx"; only a few also have a bare name.
        return "flag-" + "".join(chr(ord(c) - _REGIONAL_A + ord("a")) for c in key)
    return None


def _build() -> tuple[dict[str, str], dict[str, str]]:
    by_name: dict[str, str] = {}
    by_char: dict[str, str] = {}
    en_names: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for char, data in _emoji_pkg.EMOJI_DATA.items():
        fully = data.get("status") == _FULLY_QUALIFIED
        en = data.get("en", "").strip(":")
        if en and (fully or en not in en_names):
            en_names[en] = char
            low = en.lower()
            if low != en and low not in en_names:
                en_names[low] = char
        alias_list = [a.strip(":") for a in data.get("alias", ())]
        for alias in alias_list:
            if fully or alias not in aliases:
                aliases[alias] = char
        # The Slack-style name of this emoji: the first gemoji-style alias,
        # else the CLDR name in Slack's lowercase form.
        name = next(
            (
                a
                for a in alias_list
                if _SLACK_NAME_RE.fullmatch(a) and not a.startswith("flag_for_")
            ),
            None,
        )
        if name is None:
            name = re.sub(r"[^a-z0-9_+\-]", "", en.lower().replace(" ", "_"))
        if name and _flag_name(char) is None:
            by_char.setdefault(char, name)
            by_char.setdefault(char.replace(_VS16, ""), name)
    # gemoji aliases win over CLDR names: Slack's "cat" is the cat face, not
    # the whole cat that CLDR calls "cat".
    by_name.update(en_names)
    by_name.update(aliases)
    by_name.update(_SLACK_EXTRA)
    for char, name in _PREFERRED.items():
        by_char[char] = name
        by_char[char.replace(_VS16, "")] = name
    return by_name, by_char


_BY_NAME, _BY_CHAR = _build()


def _flag(code: str) -> str | None:
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        return None
    flag = "".join(chr(_REGIONAL_A + ord(c) - ord("a")) for c in code.lower())
    return flag if flag in _emoji_pkg.EMOJI_DATA else None


def _lookup_base(name: str) -> str | None:
    found = _BY_NAME.get(name)
    if found is not None:
        return found
    low = name.lower()
    found = _BY_NAME.get(low)
    if found is not None:
        return found
    if low.startswith("flag-"):
        return _flag(low[5:])
    if low.startswith("skin-tone-") and low[10:].isdigit():
        return SKIN_TONES.get(int(low[10:]))
    # iamcal spells gendered and ZWJ names with hyphens ("man-shrugging",
    # "female-technologist") where gemoji uses underscores and man/woman.
    alt = low.replace("-", "_")
    for old, new in (("female_", "woman_"), ("male_", "man_")):
        if alt.startswith(old):
            alt = new + alt[len(old) :]
            break
    return _BY_NAME.get(alt)


def _apply_tones(base: str, tones: tuple[int, ...]) -> str | None:
    """Put skin-tone modifiers into ``base`` so the result is a known emoji."""
    modifiers = [SKIN_TONES[t] for t in tones]
    parts = base.split(_ZWJ)
    # Which ZWJ parts take a modifier differs per sequence (handshake people
    # take two, a technologist one), so try the smallest set that Unicode knows.
    for size in range(1, len(parts) + 1):
        for chosen in itertools.combinations(range(len(parts)), size):
            if len(modifiers) > 1 and size != len(modifiers):
                continue
            out = list(parts)
            for n, index in enumerate(chosen):
                mod = modifiers[n] if len(modifiers) > 1 else modifiers[0]
                part = out[index].replace(_VS16, "") or " "
                out[index] = part[0] + mod + part[1:]
            candidate = _ZWJ.join(out)
            if candidate in _emoji_pkg.EMOJI_DATA:
                return candidate
    return None


@lru_cache(maxsize=4096)
def slack_emoji_to_unicode(name: str) -> str | None:
    """The Unicode emoji for a Slack emoji name, or None for a custom emoji.

    Accepts the forms Slack uses in reactions and mrkdwn, with or without
    colons: ``smile``, ``+1::skin-tone-3``, ``:wave::skin-tone-5:``, and the
    two-tone ``handshake::skin-tone-2-6``.
    """
    if not isinstance(name, str):
        return None
    name = name.strip()
    if len(name) > 2 and name[0] == ":" and name[-1] == ":":
        name = name[1:-1]
    base_name, sep, tone_part = name.partition("::")
    if not base_name:
        return None
    base = _lookup_base(base_name)
    if base is None:
        return None
    if not sep:
        return base
    tone_part = tone_part.strip(":")
    if not tone_part.startswith("skin-tone-"):
        return base
    try:
        tones = tuple(int(t) for t in tone_part[10:].split("-"))
    except ValueError:
        return base
    if not tones or len(tones) > 2 or any(t not in SKIN_TONES for t in tones):
        return base
    if len(tones) == 2 and tones[0] == tones[1]:
        tones = tones[:1]
    # A tone the emoji cannot take is dropped rather than shown as a stray
    # colour swatch next to it.
    return _apply_tones(base, tones) or base


@lru_cache(maxsize=4096)
def unicode_to_slack_emoji(key: str) -> str | None:
    """The Slack emoji name for a Matrix reaction key, for ``reactions.add``.

    ``"👍"`` gives ``"+1"``, ``"👍🏽"`` gives ``"+1::skin-tone-4"``. A key of
    the form ``":name:"`` gives ``"name"``: that is how Slack's custom emoji
    reach Matrix, so a Matrix user who adds the same reaction adds it on Slack
    too. Anything else (free text, several emoji, an unknown symbol) gives
    None: Slack only accepts names it knows, so the caller should skip such a
    reaction rather than send a name Slack will refuse.
    """
    if not isinstance(key, str):
        return None
    key = key.strip()
    if not key:
        return None
    if len(key) > 2 and key[0] == ":" and key[-1] == ":":
        inner = key[1:-1]
        base_name, sep, tone_part = inner.partition("::")
        if _SLACK_NAME_RE.fullmatch(base_name) and (
            not sep or re.fullmatch(r"skin-tone-[2-6](?:-[2-6])?", tone_part)
        ):
            return inner
        return None
    direct = _BY_CHAR.get(key)
    if direct is not None and not any(c in _TONE_OF_MODIFIER for c in key):
        return direct
    tones = [_TONE_OF_MODIFIER[c] for c in key if c in _TONE_OF_MODIFIER]
    base = "".join(c for c in key if c not in _TONE_OF_MODIFIER)
    if not tones:
        return _flag_name(key)
    if not base:
        return f"skin-tone-{tones[0]}" if len(tones) == 1 else None
    if key not in _emoji_pkg.EMOJI_DATA and key.replace(_VS16, "") not in _emoji_pkg.EMOJI_DATA:
        return None
    name = _BY_CHAR.get(base) or _BY_CHAR.get(base + _VS16)
    if name is None:
        return None
    distinct = list(dict.fromkeys(tones))
    if len(distinct) == 1:
        return f"{name}::skin-tone-{distinct[0]}"
    return f"{name}::skin-tone-{distinct[0]}-{distinct[1]}"

