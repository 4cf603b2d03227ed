"""Keep what a message's author wrote: drop quoted replies, forwarded history and signatures.

The embed stage calls :func:`strip_reply_text` on ``EmailNormalized.text`` before chunking: the
text a reply quotes was already embedded with the message it came from, so embedding it again
costs model time and fills search results with copies. Pure, synchronous, deterministic; no I/O.

Contract (tested with Hypothesis):

* The result is the input with whole lines removed: every kept line is verbatim, in order.
  Lines end at ``\\n`` only, so removing a line never merges two others.
* Idempotent: stripping a stripped text changes nothing.
* Conservative: text with any word in it never comes back without one (a message that is only
  a quote, a sign-off or a signature is kept whole), and a message that is only a forward (its
  own note before the forward marker has fewer than :data:`FORWARD_NOTE_WORDS` words) is kept
  whole: the forwarded mail was never embedded for this mailbox.

What is removed, in the author's part of the message (before the first forward marker):

* ``>``-quoted lines, and the attribution line that introduces them ("On ... wrote:", and its
  French, German, Spanish, Portuguese, Italian, Dutch, Swedish and Russian forms);
* from a reply header to the end: an attribution followed by unquoted text, Outlook's
  "-----Original Message-----" and its translations, a "From:"/"Sent:"/"To:" header block
  (with the "____" rule above it);
* from a ``-- `` signature delimiter to the end; "Sent from my ..." lines;
* a closing sign-off ("Thanks,", "Best regards", "Cordialement", ...) followed only by a few
  short lines (a name, a title, a phone number) at the end;
* with an own note of :data:`FORWARD_NOTE_WORDS` words or more, the forwarded part.

It must not call anything but ``re``: it runs on the agent's event loop for every message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["FORWARD_NOTE_WORDS", "strip_reply_text"]

FORWARD_NOTE_WORDS = 3
"""A note above a forward with fewer words than this ("FYI", "see below") is no message of its
own: the forward is what the mail says, so it is kept."""

_SIGN_OFF_TAIL = 6  # most short lines a sign-off may be followed by (name, title, phone, ...)
_SHORT_LINE = 60  # characters

_WORD = re.compile(r"\w", re.UNICODE)
_QUOTED = re.compile(r"^[ \t]*>")
# Attribution lines, possibly wrapped over two lines by the sending client (Gmail wraps at 78).
_ATTRIBUTION = re.compile(
    r"^[ \t]*(?:"
    r"on\b.{0,200}\bwrote[ \t]*:"  # English
    r"|le\b.{0,200}\ba [ée]crit[ \t]*:"  # French
    r"|am\b.{0,200}\bschrieb.{0,200}:"  # German
    r"|el\b.{0,200}\bescribi[óo][ \t]*:"  # Spanish
    r"|em\b.{0,200}\bescreveu[ \t]*:"  # Portuguese
    r"|il\b.{0,200}\bha scritto[ \t]*:"  # Italian
    r"|op\b.{0,200}\bschreef.{0,200}:"  # Dutch
    r"|den\b.{0,200}\bskrev.{0,200}:"  # Swedish, Danish, Norwegian
    r"|.{0,200}\b(?:пишет|написал(?:а|\(а\))?)[ \t]*:"  # noqa: RUF001 - Russian
    r")[ \t]*$",
    re.IGNORECASE | re.DOTALL,
)
# Every attribution has one of these verbs: a cheap test before the full pattern, which is slow.
_ATTRIBUTION_VERB = re.compile(
    r"wrote|[ée]crit|schrieb|escribi|escreveu|scritto|schreef|skrev|пишет|написал", re.IGNORECASE
)
_ORIGINAL_MESSAGE = re.compile(
    r"^[ \t]*-{2,}[ \t]*(?:original message|ursprüngliche nachricht|message d'origine"
    r"|mensaje original|mensagem original|messaggio originale|oorspronkelijk bericht"
    r"|ursprungligt meddelande|исходное сообщение)[ \t]*-{2,}[ \t]*$",
    re.IGNORECASE,
)
_FORWARD = re.compile(
    r"^[ \t]*(?:-{2,}[ \t]*(?:forwarded message|mensagem encaminhada|message transf[ée]r[ée]"
    r"|weitergeleitete nachricht|mensaje reenviado|messaggio inoltrato|doorgestuurd bericht"
    r"|vidarebefordrat meddelande|пересылаемое сообщение)[ \t]*-{2,}"
    r"|begin forwarded message[ \t]*:|début du message réexpédié[ \t]*:)[ \t]*$",
    re.IGNORECASE,
)
# An Outlook-style header block: a "From:" line, then "Sent:"/"Date:" and "To:"/"Subject:"
# within the next few lines.
_HEADER_FROM = re.compile(r"^[ \t]*\*?(?:from|von|de|da|van|från|от)[ \t]*:\*?", re.IGNORECASE)
_HEADER_SENT = re.compile(
    r"^[ \t]*\*?(?:sent|date|gesendet|datum|envoyé|enviado|inviato|verzonden|skickat|отправлено)"
    r"[ \t]*:",
    re.IGNORECASE,
)
_HEADER_TO = re.compile(
    r"^[ \t]*\*?(?:to|subject|an|betreff|à|objet|para|asunto|assunto|a|oggetto|aan|onderwerp"
    r"|till|ämne|кому|тема)[ \t]*:",
    re.IGNORECASE,
)
_HEADER_SPAN = 6  # lines a header block's fields spread over
_RULE = re.compile(r"^[ \t]*_{10,}[ \t]*$")
_SIGNATURE = re.compile(r"^--[ \t]?$")
_SENT_FROM = re.compile(
    r"^[ \t]*(?:sent from my\b|get outlook for\b|envoyé de mon\b|von meinem\b.{0,40}gesendet"
    r"|enviado desde mi\b|enviado do meu\b|inviato da\b).{0,60}$",
    re.IGNORECASE,
)
_SIGN_OFF = re.compile(
    r"^[ \t]*(?:thanks|thank you|many thanks|thanks again|thx|cheers|best|best regards"
    r"|best wishes|kind regards|warm regards|regards|sincerely|yours|all the best|br"
    r"|merci|cordialement|bien à vous|bisous|viele grüße|liebe grüße|mit freundlichen grüßen"
    r"|beste grüße|gruß|saludos|un saludo|atentamente|abraços|atenciosamente|obrigad[oa]"
    r"|grazie|cordiali saluti|saluti|groeten|met vriendelijke groet|hälsningar|mvh"
    r"|с уважением|спасибо)[ \t]*[,.!]?[ \t]*$",  # noqa: RUF001 - Russian
    re.IGNORECASE,
)


def strip_reply_text(text: str) -> str:
    """Return ``text`` without quoted replies, forwarded history and signatures.

    Pure, deterministic and idempotent; never raises. See the module docstring for the rules.
    """
    lines = _split_lines(text)
    forward = _first(lines, _FORWARD)
    if forward is not None:
        note = _own_part(lines[:forward])
        if _word_count(note) < FORWARD_NOTE_WORDS:
            return text  # only a forward: its content is new to this mailbox
        kept = note
    else:
        kept = _own_part(lines)
    kept = _tidy(_drop_sign_off(kept))
    if not any(_WORD.search(line) for line in kept):
        return text  # nothing of the author's own would be left: keep it all
    return "".join(kept)


def _split_lines(text: str) -> list[str]:
    """Split after each ``\\n`` only (``str.splitlines`` also splits at ``\\r``, ``\\x1c``, ...,
    and rejoining lines around a removed one could then merge a ``\\r`` with a ``\\n``)."""
    lines = text.split("\n")
    ended = [line + "\n" for line in lines[:-1]]
    return [*ended, lines[-1]] if lines[-1] else ended


def _first(lines: Sequence[str], pattern: re.Pattern[str]) -> int | None:
    return next((i for i, line in enumerate(lines) if pattern.match(line.rstrip("\r\n"))), None)


def _own_part(lines: list[str]) -> list[str]:
    """Drop quotes, then cut at the first reply header or signature that follows own text.

    Quotes go first so the cut rules, which look ahead, see the lines a second pass would see.
    """
    return _cut_history(_unquoted(lines))


def _unquoted(lines: list[str]) -> list[str]:
    """Drop quoted lines, the attributions right above them and "Sent from my ..." lines."""
    kept: list[str] = []
    index = 0
    while index < len(lines):
        attribution = _attribution_length(lines, index)
        if attribution and _quote_follows(lines, index + attribution):
            index += attribution
            continue
        line = lines[index]
        if not (_QUOTED.match(line) or _SENT_FROM.match(_bare(line))):
            kept.append(line)
        index += 1
    return kept


def _cut_history(lines: list[str]) -> list[str]:
    """Return the lines before the first history or signature start that follows own words."""
    words_before = False
    for index, line in enumerate(lines):
        if words_before and line.strip() and _starts_history(lines, index):
            return lines[:index]
        words_before = words_before or bool(_WORD.search(line))
    return lines


def _starts_history(lines: Sequence[str], index: int) -> bool:
    """Whether ``lines[index]`` starts quoted history or a signature (quotes already gone).

    Looks ahead at non-blank lines only, so removing blank lines changes no answer.
    """
    bare = _bare(lines[index])
    if _SIGNATURE.match(bare) or _ORIGINAL_MESSAGE.match(bare):
        return True
    if _RULE.match(bare):
        following = _next_content(lines, index + 1)
        return following is not None and _header_block_at(lines, following)
    return _header_block_at(lines, index) or _attribution_length(lines, index) > 0


def _attribution_length(lines: Sequence[str], index: int) -> int:
    """How many lines (1 or 2) from ``index`` form an attribution line; 0 if none."""
    first = _bare(lines[index])
    if not first.strip() or len(first) > 300:
        return 0
    if _ATTRIBUTION_VERB.search(first) and _ATTRIBUTION.match(first):
        return 1
    if index + 1 < len(lines):
        second = _bare(lines[index + 1])
        if (
            len(second) <= 300
            and _ATTRIBUTION_VERB.search(second)
            and _ATTRIBUTION.match(f"{first} {second}")
        ):
            return 2
    return 0


def _quote_follows(lines: Sequence[str], index: int) -> bool:
    following = _next_content(lines, index)
    return following is not None and bool(_QUOTED.match(lines[following]))


def _header_block_at(lines: Sequence[str], index: int) -> bool:
    if not _HEADER_FROM.match(lines[index]):
        return False
    window: list[str] = []
    position = index + 1
    while position < len(lines) and len(window) < _HEADER_SPAN:
        if lines[position].strip():
            window.append(_bare(lines[position]))
        position += 1
    return any(_HEADER_SENT.match(line) for line in window) and any(
        _HEADER_TO.match(line) for line in window
    )


def _next_content(lines: Sequence[str], index: int) -> int | None:
    while index < len(lines):
        if lines[index].strip():
            return index
        index += 1
    return None


def _drop_sign_off(lines: list[str]) -> list[str]:
    """Drop closing sign-offs and the short lines after them, as long as own text stays.

    Repeats on what is left (so a second pass finds none: idempotence); each round looks only
    at the last few lines, so a text of many sign-offs costs linear time.
    """
    first_words = next((i for i, line in enumerate(lines) if _WORD.search(line)), len(lines))
    end = len(lines)
    while True:
        tail = _last_content(lines, end, _SIGN_OFF_TAIL + 1)
        start = _sign_off_start(lines, tail)
        if start is None or first_words >= start:
            return lines[:end]
        end = start


def _last_content(lines: Sequence[str], end: int, count: int) -> list[int]:
    """Indices of the last ``count`` non-blank lines before ``end``, in order."""
    found: list[int] = []
    index = end - 1
    while index >= 0 and len(found) < count:
        if lines[index].strip():
            found.append(index)
        index -= 1
    return found[::-1]


def _sign_off_start(lines: Sequence[str], tail: Sequence[int]) -> int | None:
    """The earliest sign-off among the ``tail`` lines after which every line is short."""
    for position, index in enumerate(tail):
        after = tail[position + 1 :]
        if _SIGN_OFF.match(_bare(lines[index])) and all(
            len(_bare(lines[i]).strip()) <= _SHORT_LINE for i in after
        ):
            return index
    return None


def _tidy(lines: list[str]) -> list[str]:
    """Drop leading and trailing blank lines and all but the first of consecutive ones."""
    kept: list[str] = []
    for line in lines:
        blank = not line.strip()
        if blank and (not kept or not kept[-1].strip()):
            continue
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return kept


def _word_count(lines: Sequence[str]) -> int:
    return sum(1 for line in lines for word in line.split() if _WORD.search(word))


def _has_words(lines: Sequence[str]) -> bool:
    return any(_WORD.search(line) for line in lines)


def _bare(line: str) -> str:
    return line.rstrip("\r\n")
