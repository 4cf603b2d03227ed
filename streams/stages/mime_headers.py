"""Header values as ``email.policy.default`` reads them, without building its header objects.

The policy parses every header it is asked for into a token tree (``email._header_value_parser``)
and serializes it back: about 0.15 ms a value, and the MIME walk asks for each part's
Content-Type a dozen times. For the shapes real mail writes (an unstructured ASCII value without
encoded words, a plain ``type/subtype; name=value`` list, a one-token transfer encoding, a lone
``<id@host>``) the result is known without the tree: :func:`plain_header_value` computes it. For
anything else it answers ``None`` and the caller asks the policy; the tests compare the two on
generated values.

Pure; no I/O. Must not decide anything the policy would decide differently.
"""

from __future__ import annotations

import re

__all__ = ["plain_header_value"]

# What email.policy.EmailPolicy.header_fetch_parse removes before parsing (it does not use
# str.splitlines, which splits on more than CR and LF).
_LINE_SEPARATORS = re.compile(r"\n|\r")

# The names email.headerregistry parses as structured headers; all others are unstructured.
_STRUCTURED = frozenset(
    {
        "date",
        "resent-date",
        "orig-date",
        "sender",
        "resent-sender",
        "to",
        "resent-to",
        "cc",
        "resent-cc",
        "bcc",
        "resent-bcc",
        "from",
        "resent-from",
        "reply-to",
        "mime-version",
        "content-type",
        "content-disposition",
        "content-transfer-encoding",
        "message-id",
    }
)
_PARAMETERIZED = frozenset({"content-type", "content-disposition"})

_WS = r"[ \t]*"
_PLAIN_WORD = r"[A-Za-z0-9_.+-]+"
# A parameter: a plain name (no RFC 2231 '*'), then a plain token or a non-empty quoted string
# without escapes or encoded words (checked apart: the regex allows "=?" inside quotes).
_PARAMETER = re.compile(
    rf'{_WS};{_WS}(?P<name>{_PLAIN_WORD}){_WS}={_WS}(?:(?P<token>{_PLAIN_WORD})|"(?P<quoted>[^"\\]+)")'
)
_CONTENT_TYPE_HEAD = re.compile(rf"{_WS}{_PLAIN_WORD}/{_PLAIN_WORD}{_WS}")
_DISPOSITION_HEAD = re.compile(rf"{_WS}{_PLAIN_WORD}{_WS}")
_TRAILER = re.compile(_WS)
_TRANSFER_ENCODING = re.compile(rf"{_WS}[A-Za-z0-9-]+{_WS}")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_MESSAGE_ID = re.compile(rf"{_WS}<{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*>{_WS}")


def plain_header_value(name: str, value: str) -> str | None:
    """Return ``str(email.policy.default.header_fetch_parse(name, value))`` when cheap to know.

    Pure. ``name`` is lower case. ``None`` means the value has a shape this function does not
    cover (non-ASCII or undecoded 8-bit text, encoded words, comments, RFC 2231 parameters,
    escapes, ...): parse it with the policy instead.
    """
    if not value.isascii():
        return None
    value = _LINE_SEPARATORS.sub("", value)
    if name not in _STRUCTURED:
        return None if "=?" in value else value
    if name in _PARAMETERIZED:
        return _parameterized(name, value)
    if name == "content-transfer-encoding":
        return value if _TRANSFER_ENCODING.fullmatch(value) else None
    if name == "message-id":
        return value if _MESSAGE_ID.fullmatch(value) else None
    return None


def _parameterized(name: str, value: str) -> str | None:
    """The policy keeps the text before the first ';' and writes each parameter ``; n="v"``."""
    head = (_CONTENT_TYPE_HEAD if name == "content-type" else _DISPOSITION_HEAD).match(value)
    if head is None:
        return None
    parts = [head.group()]
    names: set[str] = set()
    position = head.end()
    while (parameter := _PARAMETER.match(value, position)) is not None:
        text = parameter.group("token") or parameter.group("quoted")
        if "=?" in text:
            return None  # the policy decodes encoded words even inside quotes
        lowered = parameter.group("name").lower()
        if lowered in names:
            return None  # the policy keeps one of them
        names.add(lowered)
        parts.append(f'; {parameter.group("name")}="{text}"')
        position = parameter.end()
    if _TRAILER.fullmatch(value, position) is None:
        return None
    return "".join(parts)
