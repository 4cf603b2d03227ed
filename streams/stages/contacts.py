"""Extract the contacts of one normalized message (pure, synchronous, deterministic).

The extract agent calls :func:`extract_contacts` on a :class:`streams.stages.mime.NormalizedEmail`
(or on any object with the same ``sender``/``to``/``cc``/``bcc``/``reply_to`` attributes, such
as the ``EmailNormalized`` event model) and emits one contact per (address, role).

The addresses come from :mod:`streams.stages.mime`, which parses headers with
:func:`email.utils.getaddresses`; this module only normalizes and filters them, so its output is
exactly ``getaddresses`` over the decoded headers, minus invalid addresses and duplicates.
No I/O, no clock, no settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from schemas.models import ContactRole

__all__ = [
    "Contact",
    "ContactRole",
    "ParticipantsLike",
    "extract_contacts",
    "is_valid_address",
    "normalize_address",
]


@dataclass(frozen=True, slots=True)
class Contact:
    """One participant of a message in one role."""

    address: str  # lower-cased, stripped, syntactically valid
    display_name: str | None  # decoded and unquoted; None when empty or equal to the address
    role: ContactRole


class AddressLike(Protocol):
    """A parsed mailbox: ``streams.stages.mime.EmailAddress`` or the event's address record."""

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


# RFC 5322 dot-atom local part (plus UTF-8 per RFC 6531) or a quoted string.
_ATOM = r"[^\s\"(),:;<>@\[\\\].]+"
_LOCAL = re.compile(rf'(?:{_ATOM}(?:\.{_ATOM})*|"(?:[^"\\\r\n]|\\.)+")')
_LABEL = re.compile(r"(?!-)[^\W_](?:[^\W_]|-)*(?<!-)")
_QUOTES = "\"'"


def extract_contacts(email: ParticipantsLike) -> list[Contact]:
    """Return the message's contacts in header order: From, To, Cc, Bcc, Reply-To.

    Pure and deterministic. Addresses are lower-cased and stripped; syntactically invalid ones
    (see :func:`is_valid_address`) are dropped. Within the message each (address, role) appears
    once; its display name is the first non-empty one seen for that pair.
    """
    found: dict[tuple[str, ContactRole], str | None] = {}
    for role, mailbox in _mailboxes(email):
        address = normalize_address(mailbox.address)
        if not is_valid_address(address):
            continue
        key = (address, role)
        name = _display_name(mailbox.name, address)
        if key not in found or (found[key] is None and name is not None):
            found[key] = name
    return [Contact(address, name, role) for (address, role), name in found.items()]


def normalize_address(address: str) -> str:
    """Lower-case and strip an address, dropping the angle brackets some headers leave."""
    return address.strip().strip("<>").strip().lower()


def is_valid_address(address: str) -> bool:
    """Tell whether ``address`` is ``local@domain`` as RFC 5322 writes it (no ``[IP]`` literals).

    The local part is a dot-atom (UTF-8 allowed) or a quoted string, at most 64 characters;
    the domain has at least two labels of letters, digits and inner hyphens, at most 253
    characters. This rejects what parsers leave from broken headers (``""``, ``@``, ``a@``,
    ``a b@c``, ``a@b``), not every address a server would refuse.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or len(local) > 64 or not domain or len(domain) > 253:
        return False
    if not _LOCAL.fullmatch(local):
        return False
    labels = domain.split(".")
    return len(labels) >= 2 and all(
        len(label) <= 63 and _LABEL.fullmatch(label) for label in labels
    )


def _mailboxes(email: ParticipantsLike) -> Iterator[tuple[ContactRole, AddressLike]]:
    if email.sender is not None:
        yield ContactRole.FROM, email.sender
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
