"""Normalize one raw RFC 5322 message into a :class:`NormalizedEmail` (pure, never raises).

The normalize agent calls :func:`normalize_message` on the bytes of a Gmail ``format=raw``
message and maps the result onto the Avro ``EmailNormalized`` event (see
:meth:`NormalizedEmail.as_event_fields`). This module is synchronous and deterministic: no I/O,
no clock, no settings. It must not import ``inboxflow.wiring`` or anything that does I/O.

Robustness contract: any byte string yields a result, except a MIME bomb (a tree nested deeper
than :data:`MAX_MIME_DEPTH` or split into more than :data:`MAX_MIME_PARTS` parts), which raises
:class:`schemas.errors.MimeBombError` (PERMANENT) before the tree is built. Mail in the wild has
broken headers, unknown or lying charsets, bad base64 and truncated MIME trees; each of those
degrades one field (to ``None``, ``""`` or a best-effort decode) and never the whole message.
Every string in the result is valid Unicode without lone surrogates or NUL characters, so it can
be written to Avro and to Postgres ``text`` columns as is.

Speed (about 0.4 ms for a typical 3 KB message): the stdlib parser runs without compiling a
regex per multipart boundary (:mod:`streams.stages.mime_feedparser`), header values of the usual
shapes are read without the policy's token tree (:mod:`streams.stages.mime_headers`), parsed
headers and address pieces are cached, and each part's type and disposition are read once.
Every shortcut gives what the slow path gives, or steps aside for it.
"""

from __future__ import annotations

import codecs
import functools
import html
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.policy import EmailPolicy
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import charset_normalizer

from schemas.errors import MimeBombError
from schemas.store import SOE_HEADER_SIZE, body_writer
from streams.stages.contacts import parse_mailboxes
from streams.stages.html_text import html_to_text, meta_charsets
from streams.stages.mime_feedparser import BytesFeedParser
from streams.stages.mime_headers import plain_header_value

if TYPE_CHECKING:
    # The models are imported where they are used: a CPU pool worker parses and writes Avro
    # bodies (``normalized_body``) without pydantic: 33 against 42 MiB a worker at start.
    from schemas.models import EmailNormalized, GmailMessageFetched

__all__ = [
    "DEFAULT_MAX_TEXT_CHARS",
    "MAX_MIME_DEPTH",
    "MAX_MIME_PARTS",
    "SNIPPET_CHARS",
    "Attachment",
    "EmailAddress",
    "NormalizedEmail",
    "RawMessage",
    "decode_bytes",
    "decode_html",
    "make_snippet",
    "normalize_message",
    "normalized_bodies",
    "normalized_body",
    "normalized_event",
]

SNIPPET_CHARS = 200
EMAIL_NORMALIZED_AVRO = "email_normalized.avsc"  # EmailNormalized.avro_file (tested)
# Kafka's default max.message.bytes is 1 MiB: a body cut at 200k characters (<= 800 kB UTF-8)
# keeps the text of an EmailNormalized event under it; the cut sets ``truncated``. Whole events are
# fitted to their topic's limit by ``streams.stages.fitting``. ``max_text_chars=None`` keeps all.
DEFAULT_MAX_TEXT_CHARS = 200_000
# Real mail nests a handful of levels (a forward of a forward of a signed message: under 10) and
# has at most a few hundred parts. The stdlib parser costs O(depth) per line, so O(depth^2) for a
# deep tree (500 levels: 4 s; 2,000 levels: a RecursionError after 17 s): deeper or larger trees
# are refused as MIME bombs.
MAX_MIME_DEPTH = 50
MAX_MIME_PARTS = 5_000
# The policy's header parser is quadratic in the number of words (it re-slices the rest of the
# value after each one): a 100 kB Content-Type of comma-separated words took 4.4 s, a 1.7 MB
# References header 8 s. Values it parses are cut to this length (a Content-Type or a filename
# never comes near it) and cached; References and the address headers are read raw instead.
_MAX_PARSED_HEADER_CHARS = 4096

_T = TypeVar("_T")

# Charsets that mail software mislabels: decode with the superset the sender really used
# (the WHATWG encoding standard maps latin-1 and ascii labels to windows-1252 for the same reason).
_SUPERSETS = {
    "ascii": "cp1252",
    "latin_1": "cp1252",
    "iso8859_1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "euc_kr": "cp949",
    "shift_jis": "cp932",
    "iso2022_jp": "iso2022_jp_ext",
    "big5": "big5hkscs",
}
# Byte order marks decide before any declaration, as in HTML5 encoding sniffing; the -sig and
# 16-bit codecs drop the mark instead of leaving a U+FEFF in the text.
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_BE, "utf-16"),
    (codecs.BOM_UTF16_LE, "utf-16"),
)
_MSG_ID = re.compile(r"<[^<>\s]+>")
_WHITESPACE = re.compile(r"\s+")
_SURROGATES = re.compile("[\ud800-\udfff]+")


@dataclass(frozen=True, slots=True)
class EmailAddress:
    """One mailbox as written in a header: the address as given and the decoded display name."""

    address: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Attachment:
    """Metadata of one attachment or non-text part; the content itself is not kept."""

    filename: str  # decoded; "" when the part names none
    mime_type: str
    size: int  # decoded bytes
    attachment_id: str | None = None  # Gmail's id; raw messages carry none


@dataclass(frozen=True, slots=True)
class NormalizedEmail:
    """The normalized form of one message; field names match the ``EmailNormalized`` event."""

    message_id: str
    thread_id: str
    labels: tuple[str, ...]
    subject: str
    sender: EmailAddress | None
    authors: tuple[EmailAddress, ...]  # every From mailbox; ``sender`` is the first
    to: tuple[EmailAddress, ...]
    cc: tuple[EmailAddress, ...]
    bcc: tuple[EmailAddress, ...]
    reply_to: tuple[EmailAddress, ...]
    sent_at: datetime | None
    text: str
    snippet: str
    size: int
    attachments: tuple[Attachment, ...]
    message_id_header: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    truncated: bool = False  # the body text was cut at ``max_text_chars``

    def as_event_fields(self) -> dict[str, Any]:
        """Return the fields as plain dicts and lists, keyed like the Avro record."""

        def addr(a: EmailAddress) -> dict[str, str | None]:
            return {"address": a.address, "name": a.name}

        return {
            "message_id": self.message_id,
            "thread_id": self.thread_id,
            "labels": list(self.labels),
            "subject": self.subject,
            "sender": addr(self.sender) if self.sender else None,
            "authors": [addr(a) for a in self.authors],
            "to": [addr(a) for a in self.to],
            "cc": [addr(a) for a in self.cc],
            "bcc": [addr(a) for a in self.bcc],
            "reply_to": [addr(a) for a in self.reply_to],
            "sent_at": self.sent_at,
            "text": self.text,
            "snippet": self.snippet,
            "size": self.size,
            "attachments": [
                {
                    "filename": a.filename,
                    "mime_type": a.mime_type,
                    "size": a.size,
                    "attachment_id": a.attachment_id,
                }
                for a in self.attachments
            ],
            "message_id_header": self.message_id_header,
            "in_reply_to": self.in_reply_to,
            "references": list(self.references),
            "truncated": self.truncated,
        }


def normalize_message(
    raw: bytes,
    *,
    message_id: str,
    thread_id: str,
    label_ids: Sequence[str],
    size_estimate: int | None = None,
    snippet: str | None = None,
    max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS,
) -> NormalizedEmail:
    """Parse raw RFC 5322 bytes into a :class:`NormalizedEmail`.

    Pure and deterministic; raises nothing but :class:`MimeBombError` on any input bytes.

    Args:
        raw: The whole message (Gmail ``format=raw``, base64url already decoded).
        message_id: Gmail's message id, copied through.
        thread_id: Gmail's thread id, copied through.
        label_ids: Gmail label ids (``INBOX``, ``SENT``, ...), copied through in order.
        size_estimate: Gmail's ``sizeEstimate``; when ``None`` the size is ``len(raw)``.
        snippet: Gmail's ``snippet`` (HTML entities are unescaped); when ``None`` or blank,
            the snippet is the first :data:`SNIPPET_CHARS` characters of the collapsed text.
        max_text_chars: Cut the body text to this many characters (``None``: no cut); a cut
            sets ``truncated``.

    Returns:
        The normalized message. Body choice: the inline ``text/plain`` parts joined by a blank
        line; when they are all empty, the inline ``text/html`` parts converted to text.

    Raises:
        MimeBombError: the MIME tree nests deeper than :data:`MAX_MIME_DEPTH` levels or has more
            than :data:`MAX_MIME_PARTS` parts (PERMANENT: the record goes to the DLQ).
    """
    msg = _parse(raw)
    headers = _raw_headers(msg)
    leaves = _leaf_facts(msg)
    text = _body_text(leaves)
    truncated = max_text_chars is not None and len(text) > max_text_chars
    if truncated:
        text = text[:max_text_chars].rstrip()
    senders = _addresses(headers, "from")
    return NormalizedEmail(
        message_id=message_id,
        thread_id=thread_id,
        labels=tuple(label_ids),
        subject=_header_text(msg, headers, "subject") or "",
        sender=senders[0] if senders else None,
        authors=senders,
        to=_addresses(headers, "to"),
        cc=_addresses(headers, "cc"),
        bcc=_addresses(headers, "bcc"),
        reply_to=_addresses(headers, "reply-to"),
        sent_at=_sent_at(headers),
        text=text,
        snippet=make_snippet(html.unescape(snippet) if snippet and snippet.strip() else text),
        size=size_estimate if size_estimate is not None else len(raw),
        attachments=tuple(_attachments(leaves)),
        message_id_header=_first_msg_id(_header_text(msg, headers, "message-id")),
        in_reply_to=_first_msg_id(_header_text(msg, headers, "in-reply-to")),
        references=_msg_ids(_raw_header_text(headers, "references")),
        truncated=truncated,
    )


class RawMessage(NamedTuple):
    """What the parse needs of a GmailMessageFetched event, as a plain tuple.

    This is what crosses to a CPU worker: a tuple pickles in a seventh of the time of the event
    model, and the worker needs no model to read it.
    """

    raw: bytes
    user_id: str
    message_id: str
    thread_id: str
    sync_id: str
    label_ids: Sequence[str]
    size_estimate: int | None
    history_id: int | None

    @classmethod
    def of(cls, fetched: GmailMessageFetched) -> RawMessage:
        """Return the parts of ``fetched`` the parse uses."""
        return cls(
            fetched.raw,
            fetched.user_id,
            fetched.message_id,
            fetched.thread_id,
            fetched.sync_id,
            fetched.label_ids,
            fetched.size_estimate,
            fetched.history_id,
        )


def normalized_event(
    fetched: GmailMessageFetched, now: datetime, max_bytes: int | None = None
) -> EmailNormalized:
    """Return the EmailNormalized event of a fetched message (pure; ``now`` stamps it).

    Arguments:
        fetched: The fetched message.
        now: Stamps ``normalized_at``.
        max_bytes: The most bytes the encoded event may take (see
            :func:`streams.stages.fitting.value_limit`): a larger event is cut to fit by
            :func:`streams.stages.fitting.fit_event` and flagged ``truncated``. ``None``: no limit.

    Raises:
        MimeBombError: see :func:`normalize_message`. Never raises for size.
    """
    from schemas.models import EmailNormalized
    from streams.stages.fitting import fit_event

    event = EmailNormalized.model_validate(_event_fields(RawMessage.of(fetched), now))
    return event if max_bytes is None else fit_event(event, max_bytes)


def normalized_body(message: RawMessage, now: datetime, max_bytes: int | None = None) -> bytes:
    """Return the Avro body of the EmailNormalized event of ``message`` (pure).

    The same bytes as ``encode_body(normalized_event(...))`` (tested), without building the
    model: every field comes from :func:`normalize_message`, typed and cleaned, and the Avro
    writer checks each one. Validating the model and dumping it again cost about a tenth of a
    message's parse. Only an event over ``max_bytes`` is built as a model, to be cut to fit.

    Arguments:
        message: The fetched message's parts.
        now: Stamps ``normalized_at``.
        max_bytes: As for :func:`normalized_event`.

    Raises:
        MimeBombError: see :func:`normalize_message`. Never raises for size.
    """
    fields = _event_fields(message, now)
    body = body_writer(EMAIL_NORMALIZED_AVRO)(fields)
    if max_bytes is None or SOE_HEADER_SIZE + len(body) <= max_bytes:
        return body
    from schemas.models import EmailNormalized
    from schemas.serde import encode_body
    from streams.stages.fitting import fit_event

    return encode_body(fit_event(EmailNormalized.model_validate(fields), max_bytes))


def _event_fields(message: RawMessage, now: datetime) -> dict[str, Any]:
    parsed = normalize_message(
        message.raw,
        message_id=message.message_id,
        thread_id=message.thread_id,
        label_ids=message.label_ids,
        size_estimate=message.size_estimate,
    )
    return {
        **parsed.as_event_fields(),
        "user_id": message.user_id,
        "sync_id": message.sync_id,
        "history_id": message.history_id,
        "normalized_at": now,
        "attachments_dropped": 0,
    }


def normalized_bodies(
    batch: Sequence[tuple[RawMessage, int | None]], now: datetime
) -> list[bytes | Exception]:
    """Return :func:`normalized_body` of each ``(message, max_bytes)``, in order (pure).

    For a worker process: one call carries several messages, so the hand-over costs of a call
    are paid once for all, and bytes come back, framed by the parent (``Serde.frame``). A
    message that fails (a MIME bomb, a bug) gives its exception in its place instead of failing
    the others.
    """
    results: list[bytes | Exception] = []
    for message, max_bytes in batch:
        try:
            results.append(normalized_body(message, now, max_bytes))
        except Exception as exc:  # noqa: BLE001 - returned for the caller to route
            results.append(exc)
    return results


def make_snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """Return the first ``limit`` characters of ``text`` with whitespace collapsed.

    A cut inside a word moves back to the previous space when one is in the last quarter.
    """
    flat = _clean(_WHITESPACE.sub(" ", text).strip())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit]
    space = cut.rfind(" ")
    if space >= limit * 3 // 4 and not flat[limit].isspace():
        cut = cut[:space]
    return cut.rstrip()


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode ``data`` declared as ``charset``, falling back sensibly; never raises.

    Order: the declared charset (or the superset senders really mean, e.g. windows-1252 for
    latin-1 and ascii, cp932 for shift_jis), strictly; then UTF-8, strictly (first, for the
    windows-1252 family); then the declared charset with replacement characters if Python knows
    it; else windows-1252 with replacements.
    """
    declared = _codec_name(charset)
    # Valid UTF-8 with 8-bit bytes under a single-byte label is mislabeled UTF-8: random
    # windows-1252 text almost never forms valid UTF-8 sequences.
    order = ("utf-8", declared) if declared == "cp1252" else (declared, "utf-8")
    for candidate in order:
        if candidate is None:
            continue
        try:
            return _clean(data.decode(candidate))
        except (UnicodeError, LookupError):
            continue
    return _clean(data.decode(declared or "cp1252", errors="replace"))


def decode_html(data: bytes, charset: str | None) -> str:
    """Decode the bytes of an HTML part, finding the charset the way a browser would; never raises.

    Order: a byte order mark; the Content-Type ``charset`` when Python knows it; the first known
    ``<meta charset>`` or ``http-equiv`` declaration in the first 1024 bytes (the HTML5
    prescan); UTF-8 when the bytes are valid UTF-8; charset-normalizer's guess. The result goes
    through :func:`decode_bytes`, so a declaration that lies still decodes with its fallbacks.

    Args:
        data: The part's payload, transfer encoding already undone.
        charset: The Content-Type ``charset`` parameter, ``None`` when there is none.
    """
    return decode_bytes(data, _html_charset(data, charset))


def _html_charset(data: bytes, declared: str | None) -> str | None:
    """Return the charset label to decode an HTML part with; ``None`` when nothing fits."""
    for mark, bom_codec in _BOMS:
        if data.startswith(mark):
            return bom_codec
    if _codec_name(declared):
        return declared
    for label in meta_charsets(data):
        codec = _codec_name(label)
        if codec:
            # The prescan reads ASCII bytes, so a document it could read is no UTF-16 (WHATWG
            # maps a utf-16 declaration found this way to UTF-8).
            return "utf-8" if codec.startswith(("utf-16", "utf-32")) else label
    return _detected_charset(data)


def _detected_charset(data: bytes) -> str | None:
    """Guess the charset of undeclared bytes: UTF-8 when they decode as such, else detection.

    Valid UTF-8 with 8-bit bytes is almost never anything else, and checking it first keeps
    the (much slower) statistical detection for the rare undeclared legacy-charset part.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        best = _guard(lambda: charset_normalizer.from_bytes(data).best(), None)
        return best.encoding if best is not None else None
    return "utf-8"


def _codec_name(charset: str | None) -> str | None:
    """Return a Python text codec for a MIME charset label, or ``None`` if it names none."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").lower()
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError, TypeError):
        return None
    # codecs also holds bytes-to-bytes transforms (base64, rot13...), which are no charset.
    if not getattr(info, "_is_text_encoding", True):
        return None
    return _SUPERSETS.get(info.name.replace("-", "_"), info.name)


def _clean(text: str) -> str:
    """Make ``text`` safe for Avro and Postgres: no lone surrogates, no NUL characters."""
    if _SURROGATES.search(text):
        text = _SURROGATES.sub(_unescape_surrogates, text)
    return text.replace("\x00", "")


def _unescape_surrogates(match: re.Match[str]) -> str:
    """Decode a run of surrogate escapes (raw 8-bit header bytes) as UTF-8, else windows-1252."""
    run = match.group()
    if not all("\udc80" <= ch <= "\udcff" for ch in run):
        return "\ufffd" * len(run)  # real lone surrogates carry no bytes to recover
    data = bytes(ord(ch) - 0xDC00 for ch in run)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _guard(call: Callable[[], _T], default: _T) -> _T:
    """Run ``call``; on any exception return ``default``.

    The email package's header and MIME parsers raise assorted exceptions on malformed input
    (IndexError, AttributeError, HeaderParseError, ValueError, RecursionError...), and the set
    changes between Python releases, so a blind catch is the only way to keep the
    "never raises" contract. Each call wraps one field, so one bad header loses one field.
    """
    try:
        return call()
    except Exception:  # noqa: BLE001 - see docstring
        return default


class _BoundedPolicy(EmailPolicy):
    """``policy.default`` with hostile header lengths cut before the header parser sees them,
    plain values read without the parser (:mod:`streams.stages.mime_headers`), and each parse
    cached: ``Message.get`` parses the value again on every access, and the MIME walk reads a
    part's Content-Type and Content-Disposition several times."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        return _fetched_header(name, value[:_MAX_PARSED_HEADER_CHARS])


_POLICY = _BoundedPolicy()
# Writes headers back as they came: refolding a long one goes through the quadratic parser
# (a 0.9 MB References header in an attached message took 3.9 s to size).
_AS_WRITTEN = policy.default.clone(refold_source="none")


@functools.lru_cache(maxsize=1024)
def _fetched_header(name: str, value: str) -> Any:
    # The header objects are immutable (str subclasses with read-only params): safe to share.
    plain = plain_header_value(name.lower(), value)
    return plain if plain is not None else policy.default.header_fetch_parse(name, value)


class _BoundedFeedParser(BytesFeedParser):
    """The stdlib parser with a limit on nesting depth and part count.

    ``FeedParser._parsegen`` is the generator that parses one part; it calls itself for each
    subpart (multipart children and message/* bodies), so wrapping it sees every part as it is
    opened and knows the depth. A bomb is refused at the first part past a limit: the parser has
    then read at most ``MAX_MIME_DEPTH`` levels, whatever the message holds below.
    """

    def __init__(self) -> None:
        super().__init__(policy=_POLICY)
        self._depth = 0
        self._parts = 0

    def _parsegen(self) -> Iterator[object]:
        self._depth += 1
        self._parts += 1
        try:
            if self._depth > MAX_MIME_DEPTH:
                raise MimeBombError(
                    f"MIME tree nested deeper than {MAX_MIME_DEPTH} levels: refused as a MIME "
                    "bomb; the message cannot be normalized"
                )
            if self._parts > MAX_MIME_PARTS:
                raise MimeBombError(
                    f"MIME tree has more than {MAX_MIME_PARTS} parts: refused as a MIME bomb; "
                    "the message cannot be normalized"
                )
            yield from super()._parsegen()  # type: ignore[misc]
        finally:
            self._depth -= 1


# Fed in slices, the parser refuses a bomb within its first slice instead of first splitting the
# whole message into lines (about 9 bytes of memory per input byte). Slices stay large because
# a slice without a line feed makes the parser re-read its pending partial line.
_FEED_BYTES = 1 << 20


def _parse_bounded(raw: bytes) -> Message:
    parser = _BoundedFeedParser()
    view = memoryview(raw)
    for start in range(0, len(raw), _FEED_BYTES):
        parser.feed(bytes(view[start : start + _FEED_BYTES]))
    return parser.close()


def _parse(raw: bytes) -> Message:
    try:
        parsed: Message | None = _parse_bounded(raw)
    except MimeBombError:
        raise
    except Exception:  # noqa: BLE001 - the parser's failures vary by release; see _guard
        parsed = None
    if parsed is None:
        # Unparseable as MIME (the parser raised): keep the bytes as a plain body.
        fallback = EmailMessage(policy=policy.default)
        fallback.set_payload(raw.decode("latin-1"), charset=None)
        return fallback
    return parsed


# Lower-cased header name -> its raw (undecoded) values in order, read once per message.
_RawHeaders = dict[str, list[str]]


def _raw_headers(msg: Message) -> _RawHeaders:
    """Index the top-level headers by name, bypassing the policy's parser."""
    empty: list[tuple[str, str]] = []
    items = _guard(lambda: [(str(k), str(v)) for k, v in msg.raw_items()], empty)
    headers: _RawHeaders = {}
    for key, value in items:
        headers.setdefault(key.lower(), []).append(value)
    return headers


def _raw_header(headers: _RawHeaders, name: str) -> str | None:
    """Return the first raw value of header ``name``, or ``None``."""
    values = headers.get(name)
    return values[0] if values else None


def _header_text(msg: Message, headers: _RawHeaders, name: str) -> str | None:
    """Return the decoded, unfolded value of the first header ``name``, or ``None``."""
    value = _guard(lambda: msg.get(name), None)
    if value is not None:
        text = _guard(lambda: str(value), None)
        if text is not None:
            return _unfold(text)
    raw = _raw_header(headers, name)
    if raw is None:
        return None
    return _unfold(_decode_rfc2047(raw))


def _decode_rfc2047(value: str) -> str:
    """Decode RFC 2047 encoded words with the compat API; the value as is when that fails."""
    return _guard(lambda: str(make_header(decode_header(value))), value)


def _unfold(value: str) -> str:
    return _clean(_WHITESPACE.sub(" ", value).strip())


def _addresses(headers: _RawHeaders, name: str) -> tuple[EmailAddress, ...]:
    """Return the mailboxes of every header ``name``, in order (see :func:`_mailboxes`)."""
    found: list[EmailAddress] = []
    for value in headers.get(name, ()):
        text = _raw_text(value)
        pieces = _address_pieces(text)
        if pieces is None:
            found.extend(_mailboxes(text))
            continue
        for piece in pieces:
            short = len(piece) <= _MAX_CACHED_ADDRESS_CHARS
            found.extend(_cached_mailboxes(piece) if short else _mailboxes(piece))
    return tuple(found)


def _address_pieces(text: str) -> list[str] | None:
    """Split an address list at its commas when each piece parses alone as it would in the list.

    That holds when no token can span a comma: no quoted string, comment or domain literal, no
    group (``:`` ``;``) and every ``<`` closed by a ``>`` before the next comma. Short pieces
    repeat (the same people write to each other), so each is parsed once; ``None``: parse the
    whole text.
    """
    if _UNSPLITTABLE.search(text) or not _SPLITTABLE_ANGLES.fullmatch(text):
        return None
    return text.split(",")


def _mailboxes(text: str) -> tuple[EmailAddress, ...]:
    """Parse an address header with :func:`streams.stages.contacts.parse_mailboxes`.

    Not ``email.utils.getaddresses``, and on the raw header, not the policy's parse of it: both
    take ``alice@example.org`` for the address of ``alice@example.org <bob@example.com>``, where
    the angle-addr is. ``parse_mailboxes`` decodes encoded words itself, after parsing, so an
    encoded ``<`` or ``,`` stays text. Addresses are stripped and lower-cased (as the
    ``EmailNormalized`` schema says); entries without an address are dropped.
    """
    result = []
    for mailbox in parse_mailboxes(text):
        address = _clean(mailbox.address.strip()).lower()
        if address:
            display = _clean(mailbox.name.strip()) if mailbox.name else ""
            result.append(EmailAddress(address=address, name=display or None))
    return tuple(result)


# Parsing a mailbox is a character-by-character loop; the same few hundred correspondents fill a
# mailbox's headers, so each distinct short piece is parsed once per process.
_cached_mailboxes = functools.lru_cache(maxsize=4096)(_mailboxes)
_MAX_CACHED_ADDRESS_CHARS = 512
_UNSPLITTABLE = re.compile(r'["()\\\[\]:;]')
_SPLITTABLE_ANGLES = re.compile(r"[^<>]*(?:<[^<>,]*>[^<>]*)*")


def _raw_text(value: str) -> str:
    """A raw header value with its 8-bit bytes (kept as surrogates) decoded: UTF-8, else cp1252."""
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value
    return decode_bytes(data, "utf-8")


def _sent_at(headers: _RawHeaders) -> datetime | None:
    """Return the Date header as an aware UTC datetime; ``None`` when missing or invalid."""
    raw = _raw_header(headers, "date")
    if raw is None:
        return None
    parsed = _guard(lambda: parsedate_to_datetime(_unfold(raw)), None)
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        # RFC 5322 "-0000": the zone is unknown; UTC is the only sensible reading.
        parsed = parsed.replace(tzinfo=UTC)
    return _guard(lambda: parsed.astimezone(UTC), None)


def _raw_header_text(headers: _RawHeaders, name: str) -> str | None:
    """Return the first raw value of header ``name`` unfolded, 8-bit bytes decoded; no RFC 2047."""
    raw = _raw_header(headers, name)
    return None if raw is None else _unfold(_raw_text(raw))


def _first_msg_id(value: str | None) -> str | None:
    if not value:
        return None
    ids = _MSG_ID.findall(value)
    return ids[0] if ids else value.split()[0]


def _msg_ids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    ids = _MSG_ID.findall(value)
    return tuple(ids) if ids else tuple(value.split())


# --- MIME tree -------------------------------------------------------------------------------


def _leaves(part: Message, depth: int = 0) -> Iterator[Message]:
    """Yield leaf parts in document order; attached messages (message/rfc822) count as leaves."""
    if depth > MAX_MIME_DEPTH:
        return
    children: object = _guard(part.get_payload, None)
    if isinstance(children, list) and _guard(part.get_content_maintype, "") == "multipart":
        for child in children:
            if isinstance(child, Message):
                yield from _leaves(child, depth + 1)
        return
    yield part


def _content_type(part: Message) -> str:
    """Return the part's content type; a multipart that did not split (no or wrong boundary)
    is read as text/plain so that its body is not lost."""
    content_type = _guard(part.get_content_type, "text/plain")
    if content_type.startswith("multipart/") and not isinstance(
        _guard(part.get_payload, None), list
    ):
        return "text/plain"
    return content_type


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A leaf part with what the body and attachment passes both read, read once."""

    part: Message
    content_type: str
    filename: str
    is_attachment: bool


def _leaf_facts(msg: Message) -> list[_Leaf]:
    return [_leaf(part) for part in _leaves(msg)]


def _leaf(part: Message) -> _Leaf:
    content_type = _content_type(part)
    filename = _filename(part)
    disposition = _guard(part.get_content_disposition, None)
    is_attachment = (
        disposition == "attachment"
        or bool(filename)
        or content_type not in ("text/plain", "text/html")
    )
    return _Leaf(part, content_type, filename, is_attachment)


def _filename(part: Message) -> str:
    if not _may_name_a_file(part):
        return ""
    name = _guard(part.get_filename, None)
    if not name:
        return ""
    name = str(name)
    if "=?" in name:
        # Some clients put RFC 2047 words in filename= (not allowed, but common).
        name = _decode_rfc2047(name)
    return _unfold(name)


def _may_name_a_file(part: Message) -> bool:
    """False when neither header get_filename reads has a parameter called ``*name*``.

    get_filename looks for ``filename`` (Content-Disposition) then ``name`` (Content-Type),
    matching parameter names case-insensitively: most parts have neither, and the substring
    test is much cheaper than the parameter parse.
    """
    values = _guard(
        lambda: f"{part.get('content-disposition', '')} {part.get('content-type', '')}", None
    )
    return values is None or "name" in values.lower()


def _payload_bytes(part: Message) -> bytes:
    payload = _guard(lambda: part.get_payload(decode=True), None)
    if isinstance(payload, bytes):
        return payload
    if _guard(part.get_content_maintype, "") == "message":
        # message/rfc822: the size of the attached message as it is written.
        inner = _guard(part.get_payload, None)
        attached = inner[0] if isinstance(inner, list) and inner else None
        if isinstance(attached, Message):
            return _guard(lambda: attached.as_bytes(policy=_AS_WRITTEN), b"")
    return b""


def _attachments(leaves: list[_Leaf]) -> Iterator[Attachment]:
    for leaf in leaves:
        if leaf.is_attachment:
            yield Attachment(
                filename=leaf.filename,
                mime_type=leaf.content_type,
                size=len(_payload_bytes(leaf.part)),
            )


def _part_text(leaf: _Leaf) -> str:
    part = leaf.part
    data = _payload_bytes(part)
    charset = _guard(part.get_content_charset, None)
    if leaf.content_type == "text/html":
        markup = decode_html(data, charset)
        return _clean(_guard(lambda: html_to_text(markup), ""))
    text = decode_bytes(data, charset).replace("\r\n", "\n").replace("\r", "\n")
    return text.strip()


def _body_text(leaves: list[_Leaf]) -> str:
    inline = [leaf for leaf in leaves if not leaf.is_attachment]
    for wanted in ("text/plain", "text/html"):
        texts = [_part_text(leaf) for leaf in inline if leaf.content_type == wanted]
        joined = "\n\n".join(t for t in texts if t)
        if joined:
            return joined
    return ""
