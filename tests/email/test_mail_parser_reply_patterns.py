"""The fence around reading mail-parser-reply's regex source
(bridge/email/parse/reply/mail_parser_reply_patterns.py).

These fail, saying what changed, when a mail-parser-reply release no longer gives what that
module was written for (1.36, pinned in pyproject.toml): its languages and pattern keys, the
shapes of its regexes that the fast probes are read from, and what its patterns match.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest
from mailparser_reply.constants import MAIL_LANGUAGES

from bridge.email.parse.reply import mail_parser_reply_patterns as fence

INSTALLED = version("mail-parser-reply")


def test_installed_mail_parser_reply_gives_everything_relied_on() -> None:
    problems = fence.reliance_problems()
    assert not problems, (
        f"mail-parser-reply {INSTALLED} changed what "
        "bridge/email/parse/reply/mail_parser_reply_patterns.py relies on:\n- "
        + "\n- ".join(problems)
    )


@pytest.mark.parametrize(
    ("line", "meaning"),
    [
        ("Am 03.03.2025 um 10:15 schrieb Anna Beispiel <anna@example.org>:", "German 'schrieb'"),
        ("On Mon, 3 Mar 2025 at 10:15, Anna Example <anna@example.org> wrote:", "English 'wrote'"),
        ("Le lun. 3 mars 2025 à 10:15, Anna <anna@example.org> a écrit :", "French 'a écrit'"),
    ],
)
def test_library_quote_headers_still_match_attribution_lines(line: str, meaning: str) -> None:
    patterns = fence.get_patterns()
    text = f"Danke!\n\n{line}\n> alt"
    assert any(p.search(text) for p in patterns.headers), (
        f"mail-parser-reply {INSTALLED}'s quote-header patterns no longer match a {meaning} "
        f"attribution line: {line!r}"
    )


# "--": the strategies hand the library stripped lines, so "-- " arrives as "--".
@pytest.mark.parametrize("sign_off", ["Mit freundlichen Grüßen", "Best regards,", "--"])
def test_library_signature_regex_still_matches_sign_offs(sign_off: str) -> None:
    patterns = fence.get_patterns()
    text = f"Der Termin passt.\n\n{sign_off}\nAnna Beispiel\nStadtverwaltung"
    assert patterns.signature.search(text), (
        f"mail-parser-reply {INSTALLED}'s signature regex no longer matches {sign_off!r}"
    )


def test_a_missing_pattern_key_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(MAIL_LANGUAGES["de"], "wrote_header")
    problems = fence.reliance_problems()
    assert any("['de']['wrote_header'] is gone" in p for p in problems), problems


def test_a_pattern_of_unknown_shape_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MAIL_LANGUAGES["en"], "from_header", r"(?:From|Sent)+\s*:.*")
    problems = fence.reliance_problems()
    assert any("['en']['from_header'] has a shape" in p for p in problems), problems
