"""strip_reply_text: what an author wrote stays; quotes, history and signatures go."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.stages.reply_text import strip_reply_text

REPLY = """Sounds good, let's meet Friday at 3.

Thanks,
Bob
VP Widgets
+1 555 0100

On Mon, Jan 5, 2026 at 8:00 AM Ana Müller <ana@example.com>
wrote:

> Can we meet on Friday?
>
> Ana
"""


def test_a_gmail_reply_keeps_only_the_new_text() -> None:
    assert strip_reply_text(REPLY) == "Sounds good, let's meet Friday at 3.\n"


def test_inline_answers_stay_and_the_quoted_questions_go() -> None:
    text = (
        "On Tue, Bo wrote:\n> Is the venue booked?\nYes, since Monday.\n"
        "> And the catering?\nStill open.\n"
    )
    assert strip_reply_text(text) == "Yes, since Monday.\nStill open.\n"


@pytest.mark.parametrize(
    "attribution",
    [
        "Le lun. 5 janv. 2026 à 08:00, Ana <ana@example.com> a écrit :",
        "Am Mo., 5. Jan. 2026 um 08:00 Uhr schrieb Ana <ana@example.com>:",
        "El lun, 5 ene 2026 a las 8:00, Ana (<ana@example.com>) escribió:",
        "Em seg., 5 de jan. de 2026 às 08:00, Ana <ana@example.com> escreveu:",
        "Il giorno lun 5 gen 2026 alle 08:00 Ana <ana@example.com> ha scritto:",
        "Op ma 5 jan. 2026 om 08:00 schreef Ana <ana@example.com>:",
        "5 янв. 2026 г., в 08:00, Ana <ana@example.com> написал(а):",  # noqa: RUF001
    ],
)
def test_non_english_attributions_go_with_their_quote(attribution: str) -> None:
    text = f"D'accord, on fait comme ça.\n\n{attribution}\n> Proposition du budget\n"
    assert strip_reply_text(text) == "D'accord, on fait comme ça.\n"


def test_an_outlook_reply_loses_the_header_block_and_everything_below() -> None:
    text = (
        "Agreed, ship it.\r\n\r\n________________________________\r\n"
        "From: Ana Müller <ana@example.com>\r\nSent: Monday, January 5, 2026 8:00 AM\r\n"
        "To: Bob <bob@example.org>\r\nSubject: RE: release\r\n\r\nShall we ship on Friday?\r\n"
    )
    assert strip_reply_text(text) == "Agreed, ship it.\r\n"


@pytest.mark.parametrize(
    "separator", ["-----Original Message-----", "-----Ursprüngliche Nachricht-----"]
)
def test_original_message_separators_cut_the_history(separator: str) -> None:
    text = f"Looks right to me.\n{separator}\nFrom: Ana\nThe old question.\n"
    assert strip_reply_text(text) == "Looks right to me.\n"


def test_an_attribution_above_unquoted_history_cuts_it() -> None:
    text = "Fine by me.\n\nOn Mon, Ana <ana@example.com> wrote:\n\nThe old text, not quoted.\n"
    assert strip_reply_text(text) == "Fine by me.\n"


def test_signatures_and_mobile_footers_go() -> None:
    text = "The report is attached.\n\nSent from my iPhone\n-- \nBob Smith\nACME Corp\n"
    assert strip_reply_text(text) == "The report is attached.\n"


def test_a_sign_off_followed_by_a_long_line_is_text_not_a_signature() -> None:
    text = (
        "Quick update.\nThanks,\n"
        "this line goes on and on about the plan for next week, far longer than a name.\n"
    )
    assert strip_reply_text(text) == text


def test_a_forward_with_a_note_keeps_the_note_only() -> None:
    text = (
        "Please check these figures before Monday's call.\n\n"
        "---------- Forwarded message ---------\nFrom: Ana <ana@example.com>\n"
        "Date: Mon, Jan 5, 2026\nSubject: Budget\nTo: Bob <bob@example.org>\n\n"
        "The budget is 42k.\n"
    )
    assert strip_reply_text(text) == "Please check these figures before Monday's call.\n"


@pytest.mark.parametrize("note", ["", "FYI\n\n", "fyi:\n-- \nBob\n"])
def test_a_message_that_is_only_a_forward_keeps_it_all(note: str) -> None:
    text = (
        f"{note}---------- Forwarded message ---------\nFrom: Ana <ana@example.com>\n"
        "Subject: Budget\n\nThe budget is 42k.\n\nOn Sun, Eva wrote:\n> What is the budget?\n"
    )
    assert strip_reply_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "Thanks!\n",
        "> all of it quoted\n> really\n",
        "-- \nonly a signature\n",
        "",
        "\n\n",
        "On Mon, Ana wrote:\n> hi\n",
    ],
)
def test_text_with_nothing_of_its_own_is_kept_whole(text: str) -> None:
    assert strip_reply_text(text) == text


def test_plain_text_is_left_as_it_is() -> None:
    text = "Hello,\n\nthe meeting moved to room 4.\nSee you there\n"
    assert strip_reply_text(text) == text


# --- properties ----------------------------------------------------------------------------------

_SPECIAL_LINES = [
    "> quoted line",
    ">",
    "On Mon, Jan 5, 2026 at 8:00 AM Ana <ana@example.com> wrote:",
    "On Mon, Jan 5, 2026 at 8:00 AM Ana",
    "wrote:",
    "Le lun. 5 janv. à 08:00, Ana a écrit :",
    "-----Original Message-----",
    "________________________________",
    "From: Ana <ana@example.com>",
    "Sent: Monday",
    "To: Bob",
    "Subject: hi",
    "---------- Forwarded message ---------",
    "Begin forwarded message:",
    "-- ",
    "--",
    "Sent from my iPhone",
    "Thanks,",
    "Best regards",
    "Bob",
    "",
    " ",
    "The budget is 42k.",
    "a line that is considerably longer than sixty characters, as a paragraph would be",
    "\r",
]
_LINE = st.one_of(st.sampled_from(_SPECIAL_LINES), st.text(max_size=30))
_MAIL_LIKE = st.lists(_LINE, max_size=25).flatmap(
    lambda lines: st.sampled_from(["\n", "\r\n"]).map(lambda end: end.join(lines))
)
_ANY_TEXT = st.one_of(_MAIL_LIKE, st.text(max_size=300))


def _is_line_subsequence(kept: str, text: str) -> bool:
    """Whether ``kept`` is ``text`` with whole ``\\n``-ended lines removed."""
    source = iter(re.findall(r"[^\n]*\n|[^\n]+$", text))
    return all(any(line == candidate for candidate in source) for line in _lines(kept))


def _lines(text: str) -> list[str]:
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


@settings(max_examples=400, deadline=None)
@given(_ANY_TEXT)
def test_the_result_is_the_text_with_whole_lines_removed(text: str) -> None:
    assert _is_line_subsequence(strip_reply_text(text), text)


@settings(max_examples=400, deadline=None)
@given(_ANY_TEXT)
def test_stripping_is_idempotent(text: str) -> None:
    once = strip_reply_text(text)
    assert strip_reply_text(once) == once


@settings(max_examples=300, deadline=None)
@given(_ANY_TEXT)
def test_text_with_words_keeps_some(text: str) -> None:
    if re.search(r"\w", text):
        assert re.search(r"\w", strip_reply_text(text))


def test_many_sign_offs_take_linear_time() -> None:
    text = "Real content here.\n" + "Thanks,\nBob\n" * 20_000
    assert strip_reply_text(text) == "Real content here.\n"
