"""Gmail tokens at rest: AES-256-GCM under a key ring of one current key and earlier ones.

A token key is 32 random bytes written in URL-safe base64 (``new_key`` makes one). Its id is
derived from it (the first 8 hex digits of SHA-256 over a fixed label and the key), so nobody
names keys by hand and the id, stored beside each ciphertext, reveals nothing of the key.
``KeyRing.seal`` always encrypts under the current key; ``KeyRing.open`` decrypts under
whichever configured key the stored id names, so earlier keys keep working until every row was
re-encrypted with the current one (``inboxflow accounts rotate-key``).

Every ciphertext is bound to its row by AES-GCM associated data (the user id and the credential
kind): one copied onto another user's row, edited, or written under another key with the same id
fails authentication instead of decrypting. Pure: no I/O, no environment; messages name users and
key ids, never key material, tokens or ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.errors import CredentialsError

KEY_BYTES = 32
NONCE_BYTES = 12  # AES-GCM's standard nonce; random per encryption
_KEY_ID_LABEL = b"inboxflow token key id v1\x00"
_AAD_LABEL = "inboxflow account credential v1"
KEY_ENV = "INBOXFLOW_TOKEN_KEY"
PREVIOUS_KEYS_ENV = "INBOXFLOW_TOKEN_PREVIOUS_KEYS"


class TokenKeyFormatError(ValueError):
    """A configured token key is not 32 bytes of URL-safe base64."""


class TokenKeyMissingError(CredentialsError):
    """No token key is configured, yet an encrypted token has to be read or written."""


class UnknownTokenKeyError(CredentialsError):
    """A token was encrypted under a key that is not configured."""


class TokenAuthenticationError(CredentialsError):
    """A stored token failed authentication: altered, moved to another row, or another key."""


@dataclass(frozen=True)
class TokenKey:
    """One AES-256 key and its derived id. ``repr`` shows the id only."""

    key_id: str
    secret: bytes

    def __repr__(self) -> str:
        return f"TokenKey(key_id={self.key_id!r})"


@dataclass(frozen=True)
class Sealed:
    """A ciphertext with what opens it: the key id and the nonce (neither is secret)."""

    key_id: str
    nonce: bytes
    ciphertext: bytes


def new_key() -> str:
    """Return a fresh token key: 32 random bytes, URL-safe base64."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def key_id_of(secret: bytes) -> str:
    """Return the id of a raw key: 8 hex digits of SHA-256 over a fixed label and the key."""
    return hashlib.sha256(_KEY_ID_LABEL + secret).hexdigest()[:8]


def parse_key(text: str, *, source: str = KEY_ENV) -> TokenKey:
    """Read a key written in URL-safe base64 (padding optional); ``source`` names it in errors.

    Raises:
        TokenKeyFormatError: not base64, or not 32 bytes (the message never quotes the value).
    """
    value = text.strip()
    try:
        secret = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenKeyFormatError(_format_message(source)) from exc
    if len(secret) != KEY_BYTES:
        raise TokenKeyFormatError(_format_message(source))
    return TokenKey(key_id_of(secret), secret)


def _format_message(source: str) -> str:
    return (
        f"{source} is not a token key: expected {KEY_BYTES} random bytes in URL-safe base64 "
        "(`inboxflow accounts new-key` makes one)"
    )


def associated_data(user_id: str, kind: str) -> bytes:
    """The AES-GCM associated data that binds a ciphertext to its row."""
    return "\x00".join((_AAD_LABEL, user_id, kind)).encode("utf-8")


class KeyRing:
    """The current token key (seals and opens) and earlier ones (open only).

    Args:
        current: the key new ciphertexts are sealed under; ``None`` = read-only ring.
        previous: earlier keys, still opening rows sealed under them.

    Raises:
        ValueError: two configured keys share an id (the same key given twice is fine).
    """

    def __init__(self, current: TokenKey | None, previous: Iterable[TokenKey] = ()) -> None:
        self.current = current
        self._keys: dict[str, TokenKey] = {}
        for key in ([current] if current else []) + list(previous):
            known = self._keys.get(key.key_id)
            if known is not None and known.secret != key.secret:
                raise ValueError(f"two different token keys share the id {key.key_id}")
            self._keys.setdefault(key.key_id, key)

    @classmethod
    def from_text(cls, current: str | None, previous: str | None = None) -> KeyRing:
        """Build a ring from the environment's spelling: a key, and comma-separated earlier keys."""
        return cls(
            parse_key(current) if current and current.strip() else None,
            [
                parse_key(part, source=PREVIOUS_KEYS_ENV)
                for part in (previous or "").split(",")
                if part.strip()
            ],
        )

    @property
    def key_ids(self) -> list[str]:
        """Ids of every configured key, the current one first."""
        return list(self._keys)

    def __repr__(self) -> str:
        current = self.current.key_id if self.current else None
        return f"KeyRing(current={current!r}, key_ids={self.key_ids!r})"

    def current_key(self) -> TokenKey:
        """The key new ciphertexts are sealed under.

        Raises:
            TokenKeyMissingError: none is configured.
        """
        if self.current is None:
            raise TokenKeyMissingError(
                f"{KEY_ENV} is not set: Gmail tokens are only stored encrypted. Make a key with "
                f"`inboxflow accounts new-key` and set {KEY_ENV} to it on every inboxflow process."
            )
        return self.current

    def seal(self, plaintext: bytes, *, user_id: str, kind: str) -> Sealed:
        """Encrypt under the current key, bound to ``(user_id, kind)``.

        Raises:
            TokenKeyMissingError: the ring has no current key.
        """
        key = self.current_key()
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(key.secret).encrypt(nonce, plaintext, associated_data(user_id, kind))
        return Sealed(key.key_id, nonce, ciphertext)

    def open(self, sealed: Sealed, *, user_id: str, kind: str) -> bytes:
        """Decrypt a row's ciphertext; it must have been sealed for this ``(user_id, kind)``.

        Raises:
            TokenKeyMissingError: no key is configured at all.
            UnknownTokenKeyError: the row's key id is not among the configured keys.
            TokenAuthenticationError: the ciphertext, nonce, key id or row binding was altered.
        """
        if not self._keys:
            raise TokenKeyMissingError(
                f"{KEY_ENV} is not set, but the Gmail token of {user_id} is stored encrypted "
                f"(key id {sealed.key_id}): set {KEY_ENV} to the key with that id."
            )
        key = self._keys.get(sealed.key_id)
        if key is None:
            raise UnknownTokenKeyError(
                f"the Gmail token of {user_id} was encrypted under key id {sealed.key_id}, which "
                f"is neither {KEY_ENV} nor in {PREVIOUS_KEYS_ENV} (configured key ids: "
                f"{', '.join(self.key_ids)}). Add that key to {PREVIOUS_KEYS_ENV}, then run "
                "`inboxflow accounts rotate-key`."
            )
        try:
            return AESGCM(key.secret).decrypt(
                sealed.nonce, sealed.ciphertext, associated_data(user_id, kind)
            )
        except (InvalidTag, ValueError) as exc:  # ValueError: a nonce of the wrong size
            raise TokenAuthenticationError(
                f"the stored token for {user_id} failed authentication: altered, or written "
                "under another key. Operator action: add the account's credentials again "
                f"(`inboxflow accounts add {user_id} --oauth`)."
            ) from exc

    def needs_rotation(self, sealed: Sealed) -> bool:
        """Whether a row is sealed under a key other than the current one."""
        return self.current is None or sealed.key_id != self.current.key_id
