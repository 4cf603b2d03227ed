"""Extract the contacts of one message (pure, synchronous, deterministic).

The extract agent calls :func:`extract_contacts` on an ``EmailNormalized`` event (or a
:class:`streams.stages.mime.NormalizedEmail`, or anything with the same ``sender``/``to``/``cc``/
``bcc``/``reply_to`` attributes) and emits one contact per (address, role). Those addresses were
parsed upstream by :mod:`streams.stages.mime`; here they are only normalized, checked and
deduplicated.

:func:`parse_mailboxes` parses the text of an address header itself, and
:func:`extract_contacts_from_headers` turns header texts into contacts. The parser follows RFC 5322
§3.4 more closely than :func:`email.utils.getaddresses` (which mime still uses): an
``angle-addr`` is the address and everything before it is display text, even text that looks
like an address (``alice@example.org <bob@example.com>`` is bob); every mailbox of a ``From``
is an author; group syntax (``undisclosed-recipients:;``), comments, quoted local parts with
commas and RFC 2047 encoded words in display names are understood; broken text yields what can
be read and never an exception.

Contacts are keyed on :func:`normalize_address`: NFC, lower case, and the domain in the Unicode
form IDNA 2008 (UTS 46 mapping) gives it, so ``x@bücher.de`` and ``x@xn--bcher-kva.de`` are one
contact, stored and shown as ``x@bücher.de``.

No I/O, no clock, no settings.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import idna

from schemas.enums import ContactRole

__all__ = [
    "Contact",
    "ContactRole",
    "Mailbox",
    "ParticipantsLike",
    "extract_contacts",
    "extract_contacts_from_headers",
    "is_valid_address",
    "normalize_address",
    "parse_mailboxes",
]


@dataclass(frozen=True, slots=True)
class Contact:
    """One participant of a message in one role."""

    address: str  # normalize_address() form (the contact's key), syntactically valid
    display_name: str | None  # decoded and unquoted; None when empty or equal to the address
    role: ContactRole


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One mailbox read from header text: the addr-spec as written and the decoded display name."""

    address: str
    name: str | None = None


class AddressLike(Protocol):
    """A parsed mailbox: :class:`Mailbox`, ``streams.stages.mime.EmailAddress`` or the event's
    address record."""

    @property
    def address(self) -> str: ...

    @property
    def name(self) -> str | None: ...


class ParticipantsLike(Protocol):
    """The address fields of a normalized message."""

    @property
    def sender(self) -> AddressLike | None: ...

    @property
    def to(self) -> Sequence[AddressLike]: ...

    @property
    def cc(self) -> Sequence[AddressLike]: ...

    @property
    def bcc(self) -> Sequence[AddressLike]: ...

    @property
    def reply_to(self) -> Sequence[AddressLike]: ...


# Header order of the roles: contacts come out in this order.
_ROLE_ORDER = (
    ContactRole.FROM,
    ContactRole.TO,
    ContactRole.CC,
    ContactRole.BCC,
    ContactRole.REPLY_TO,
)

# RFC 5322 dot-atom local part (plus UTF-8 per RFC 6531) or a quoted string.
_ATOM = r"[^\s\"(),:;<>@\[\\\].]+"
_LOCAL = re.compile(rf'(?:{_ATOM}(?:\.{_ATOM})*|"(?:[^"\\\r\n]|\\.)+")')
_LABEL = re.compile(r"(?!-)[^\W_](?:[^\W_]|-)*(?<!-)")
_QUOTES = "\"'"
_SURROGATES = re.compile("[\ud800-\udfff]")
_WHITESPACE = re.compile(r"\s+")
# RFC 2047 encoded word; the charset may carry an RFC 2231 language suffix (utf-8*en).
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_ENCODED_WORDS = re.compile(r"(?<=\?=)\s+(?==\?)")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def extract_contacts(email: ParticipantsLike) -> list[Contact]:
    """Return the message's contacts in header order: From, To, Cc, Bcc, Reply-To.

    Pure and deterministic. Addresses are put in :func:`normalize_address` form; syntactically
    invalid ones (see :func:`is_valid_address`) are dropped. Within the message each
    (address, role) appears once; its display name is the first non-empty one seen for that pair.
    """
    return _contacts(_participants(email))


def extract_contacts_from_headers(headers: Mapping[ContactRole, Iterable[str]]) -> list[Contact]:
    """Return the contacts in the texts of a message's address headers, keyed by role.

    Pure, deterministic, never raises. Each role may have several header fields; each text is
    parsed with :func:`parse_mailboxes`, so every mailbox of ``From`` is a ``FROM`` contact.
    Normalization, validity and deduplication as in :func:`extract_contacts`.
    """

    def mailboxes() -> Iterator[tuple[ContactRole, AddressLike]]:
        for role in _ROLE_ORDER:
            for text in headers.get(role, ()):
                for mailbox in parse_mailboxes(text):
                    yield role, mailbox

    return _contacts(mailboxes())


def parse_mailboxes(header: str) -> list[Mailbox]:
    """Return the mailboxes of an address-list header text, in order.

    Pure, never raises. ``header`` is one field's value, folded or not, raw (encoded words are
    decoded in display names) or already decoded. The address is the ``angle-addr`` when there is
    one (an obsolete route is dropped) and the text between separators otherwise; comments and
    whitespace around ``@`` and ``.`` are left out, quoted local parts are kept quoted. The
    display name is the text before the ``angle-addr`` (quotes removed, encoded words decoded,
    whitespace collapsed), else the first comment (``a@example.com (Alice)``), else ``None``.
    A group contributes its members (``team: a@x.test, b@x.test;``), not its name. Broken text
    gives what can be read: an unclosed quote, comment or angle bracket runs to the end, a missing
    comma between two mailboxes is assumed after an ``angle-addr``. Addresses are not checked or
    normalized here; empty ones are left out.
    """
    found: list[Mailbox] = []
    current = _Pending()
    for kind, raw in _tokens(header):
        if kind in (",", ";"):
            current.finish_into(found)
            current = _Pending()
        elif kind == ":":
            if current.angle is None:  # what came before was a group's name
                current = _Pending()
        elif kind == "comment":
            current.comments.append(raw[1:-1] if raw.endswith(")") else raw[1:])
            current.words.append(("space", " "))  # a comment separates words like whitespace
        elif kind == "space":
            current.words.append((kind, raw))
        elif current.angle is not None:  # a second mailbox without a comma before it
            current.finish_into(found)
            current = _Pending()
            current.add(kind, raw)
        else:
            current.add(kind, raw)
    current.finish_into(found)
    return found


def normalize_address(address: str) -> str:
    """Return the contact key of ``address``: the form stored in events and the database.

    Pure and idempotent. Strips whitespace and stray angle brackets, applies Unicode NFC and
    lower case, and gives the domain its IDNA 2008 Unicode form (UTS 46 mapping), so the A-label
    and U-label spellings of one domain (``xn--bcher-kva.de``, ``BÜCHER.de``) become one
    (``bücher.de``). A domain that is not valid IDNA stays as lower-cased text.
    """
    text = address
    # To a fixed point: "a> >" loses " >" and then ">", as a second call would.
    while (stripped := text.strip().strip("<>")) != text:
        text = stripped
    text = unicodedata.normalize("NFC", text.lower())
    local, at, domain = text.rpartition("@")
    if not at:
        return text
    return f"{local}@{_unicode_domain(domain)}"


def is_valid_address(address: str) -> bool:
    """Tell whether ``address`` is ``local@domain`` as RFC 5322 writes it (no ``[IP]`` literals).

    The local part is a dot-atom (UTF-8 allowed) or a quoted string, at most 64 characters;
    the domain has at least two labels of letters, digits and inner hyphens, at most 253
    characters, checked on its IDNA A-label form when it has one. This rejects what parsers leave
    from broken headers (``""``, ``@``, ``a@``, ``a b@c``, ``a@b``), not every address a server
    would refuse.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or len(local) > 64 or not domain:
        return False
    if not _LOCAL.fullmatch(local):
        return False
    domain = _ascii_domain(domain)
    if len(domain) > 253:
        return False
    labels = domain.split(".")
    return len(labels) >= 2 and all(
        len(label) <= 63 and _LABEL.fullmatch(label) for label in labels
    )


# -- contacts ------------------------------------------------------------------------------------


def _contacts(mailboxes: Iterable[tuple[ContactRole, AddressLike]]) -> list[Contact]:
    found: dict[tuple[str, ContactRole], str | None] = {}
    for role, mailbox in mailboxes:
        address = normalize_address(mailbox.address)
        if not is_valid_address(address):
            continue
        key = (address, role)
        name = _display_name(mailbox.name, address)
        if key not in found or (found[key] is None and name is not None):
            found[key] = name
    return [Contact(address, name, role) for (address, role), name in found.items()]


def _participants(email: ParticipantsLike) -> Iterator[tuple[ContactRole, AddressLike]]:
    # Every author is a sender (RFC 5322 allows several); ``sender`` alone on older events.
    authors = getattr(email, "authors", None) or ([email.sender] if email.sender else [])
    for author in authors:
        yield ContactRole.FROM, author
    for role, mailboxes in (
        (ContactRole.TO, email.to),
        (ContactRole.CC, email.cc),
        (ContactRole.BCC, email.bcc),
        (ContactRole.REPLY_TO, email.reply_to),
    ):
        for mailbox in mailboxes:
            yield role, mailbox


def _display_name(name: str | None, address: str) -> str | None:
    """Return the cleaned display name, or ``None`` when it adds nothing to the address."""
    if not name:
        return None
    cleaned = " ".join(name.split())
    # Some clients wrap names in a second layer of quotes: "'Jane Doe'" or "\"Jane\"".
    while len(cleaned) >= 2 and cleaned[0] == cleaned[-1] and cleaned[0] in _QUOTES:
        cleaned = cleaned[1:-1].strip()
    if not cleaned or normalize_address(cleaned) == address:
        return None
    return cleaned


# -- domains -------------------------------------------------------------------------------------


def _unicode_domain(domain: str) -> str:
    """Return the domain's IDNA Unicode form (U-labels), or the text when it is not valid IDNA."""
    if domain.isascii() and "xn--" not in domain:
        return domain  # plain LDH: IDNA would return it unchanged
    try:
        return idna.decode(idna.encode(domain, uts46=True))
    except ValueError:  # idna.IDNAError and the UnicodeErrors of bad text are ValueErrors
        return domain


def _ascii_domain(domain: str) -> str:
    """Return the domain's IDNA A-label form, or the text when it is not valid IDNA."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except ValueError:
        return domain


# -- header text ---------------------------------------------------------------------------------


@dataclass
class _Pending:
    """The tokens of the mailbox being read, up to its separator."""

    words: list[tuple[str, str]] = field(default_factory=list)  # (kind, raw text)
    comments: list[str] = field(default_factory=list)
    angle: str | None = None  # the raw angle-addr, brackets included

    def add(self, kind: str, raw: str) -> None:
        if kind == "angle":
            self.angle = raw
        else:
            self.words.append((kind, raw))

    def finish_into(self, found: list[Mailbox]) -> None:
        comment = _clean_text(_decode_encoded_words(self.comments[0])) if self.comments else ""
        if self.angle is not None:
            inner = self.angle[1:-1] if self.angle.endswith(">") else self.angle[1:]
            address = _angle_address(inner)
            name = _phrase(self.words) or comment
        else:
            address = _addr_spec(self.words)
            name = comment
        address = _clean_address(address)
        if address:
            found.append(Mailbox(address, name or None))


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    """Split header text into ``(kind, raw)`` tokens; unclosed constructs run to the end.

    Kinds: ``space``, ``quoted`` (``"..."``), ``comment`` (``(...)``, nested), ``angle``
    (``<...>``), the separators ``,`` ``;`` ``:``, and ``atom`` (any other run, domain literals
    ``[...]`` included). A stray ``>`` is dropped.
    """
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        if char.isspace():
            j = i + 1
            while j < end and text[j].isspace():
                j += 1
            yield "space", " "
        elif char == '"':
            j = _skip_quoted(text, i, '"')
            yield "quoted", text[i:j]
        elif char == "(":
            j = _skip_comment(text, i)
            yield "comment", text[i:j]
        elif char == "<":
            j = _skip_angle(text, i)
            yield "angle", text[i:j]
        elif char in ",;:":
            j = i + 1
            yield char, char
        elif char == ">":
            j = i + 1
        else:
            j = i
            while j < end and not text[j].isspace() and text[j] not in '",;:<>(':
                j = _skip_quoted(text, j, "]") if text[j] == "[" else j + 1
            yield "atom", text[i:j]
        i = j


def _skip_quoted(text: str, start: int, close: str) -> int:
    """Return the index after the quoted string (or domain literal) that opens at ``start``."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == close:
            return i + 1
        else:
            i += 1
    return len(text)


def _skip_comment(text: str, start: int) -> int:
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def _skip_angle(text: str, start: int) -> int:
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == ">":
            return i + 1
        if char == '"':
            i = _skip_quoted(text, i, '"')
        elif char == "(":
            i = _skip_comment(text, i)
        else:
            i += 1
    return len(text)


def _angle_address(inner: str) -> str:
    """Return the addr-spec inside ``<...>``, without comments or an obsolete route."""
    words = [("space", " ") if kind == "comment" else (kind, raw) for kind, raw in _tokens(inner)]
    kinds = [kind for kind, _ in words]
    if ":" in kinds and "".join(raw for _, raw in words).lstrip().startswith("@"):
        words = words[kinds.index(":") + 1 :]  # obs-route: <@relay.example:user@example.com>
    return _addr_spec(words)


def _addr_spec(words: Sequence[tuple[str, str]]) -> str:
    """Join address tokens; whitespace is dropped next to ``@`` and ``.`` (RFC 5322 CFWS)."""
    parts: list[str] = []
    spaced = False
    for kind, raw in words:
        if kind == "space":
            spaced = bool(parts)
            continue
        if spaced and parts[-1][-1] not in "@." and raw[0] not in "@.":
            parts.append(" ")
        spaced = False
        parts.append(raw)
    return "".join(parts)


def _phrase(words: Sequence[tuple[str, str]]) -> str:
    """Return a display name: quoted strings unquoted, encoded words decoded, spaces collapsed."""
    parts = []
    for kind, raw in words:
        if kind == "quoted":
            body = raw[1:-1] if len(raw) >= 2 and raw.endswith('"') else raw[1:]
            parts.append(re.sub(r"\\(.)", r"\1", body, flags=re.DOTALL))
        else:
            parts.append(raw)
    return _clean_text(_decode_encoded_words("".join(parts)))


def _decode_encoded_words(text: str) -> str:
    """Decode RFC 2047 encoded words; one that cannot be decoded stays as written."""
    if "=?" not in text:
        return text
    text = _BETWEEN_ENCODED_WORDS.sub("", text)  # RFC 2047 §6.2: such whitespace is not text
    return _ENCODED_WORD.sub(_decode_encoded_word, text)


def _decode_encoded_word(match: re.Match[str]) -> str:
    charset, encoding, payload = match.groups()
    try:
        if encoding in "bB":
            data = base64.b64decode(payload + "=" * (-len(payload) % 4))
        else:
            data = _QP_ESCAPE.sub(
                lambda m: bytes([int(m.group(1), 16)]), payload.replace("_", " ").encode()
            )
    except (binascii.Error, ValueError):
        return match.group()
    try:
        codecs.lookup(charset)  # LookupError for unknown names
        return data.decode(charset, errors="replace")
    except (LookupError, ValueError):  # also bytes-to-bytes codecs (hex, rot13...)
        return data.decode("utf-8", errors="replace")


def _clean_text(text: str) -> str:
    """Collapse whitespace; no lone surrogates or NULs (events go to Avro and Postgres text)."""
    return _WHITESPACE.sub(" ", _clean_address(text)).strip()


def _clean_address(text: str) -> str:
    """Unfold and drop lone surrogates and NULs; spaces in a quoted local part are kept."""
    text = text.replace("\r", "").replace("\n", "").replace("\x00", "")
    return _SURROGATES.sub("\ufffd", text).strip()
