"""The token cipher: AES-GCM under a key ring, bound to its row, rotating keys, clear refusals."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from db.credentials import CredentialKind, open_credential, seal_credential
from db.token_cipher import (
    KEY_BYTES,
    KeyRing,
    Sealed,
    TokenAuthenticationError,
    TokenKeyFormatError,
    TokenKeyMissingError,
    UnknownTokenKeyError,
    key_id_of,
    new_key,
    parse_key,
)
from schemas.errors import CredentialsError, RetryClass

USER = "alice@example.org"
KIND = "authorized_user"
SECRET_TOKEN = b'{"refresh_token": "1//secret-refresh-token"}'


def ring(*keys: str, current: bool = True) -> KeyRing:
    parsed = [parse_key(k) for k in keys]
    if current:
        return KeyRing(parsed[0], parsed[1:])
    return KeyRing(None, parsed)


def test_a_new_key_is_32_random_bytes_in_url_safe_base64_with_a_derived_id() -> None:
    first, second = new_key(), new_key()
    assert first != second
    assert len(base64.urlsafe_b64decode(first)) == KEY_BYTES
    key = parse_key(first)
    assert key.key_id == key_id_of(base64.urlsafe_b64decode(first))
    assert len(key.key_id) == 8
    assert int(key.key_id, 16) >= 0
    assert parse_key(first.rstrip("=")) == key  # padding is optional
    assert first not in repr(key)
    assert first not in repr(KeyRing(key))


@pytest.mark.parametrize(
    "text", ["not base64 at all!", base64.urlsafe_b64encode(b"short").decode(), ""]
)
def test_a_malformed_key_is_refused_without_quoting_it(text: str) -> None:
    with pytest.raises(TokenKeyFormatError) as caught:
        parse_key(text or "x")
    assert "INBOXFLOW_TOKEN_KEY is not a token key" in str(caught.value)
    if text:
        assert text not in str(caught.value)


def test_a_sealed_token_opens_for_its_row_and_hides_the_plaintext() -> None:
    keys = ring(new_key())
    sealed = keys.seal(SECRET_TOKEN, user_id=USER, kind=KIND)
    assert sealed.key_id == keys.key_ids[0]
    assert len(sealed.nonce) == 12
    assert b"secret-refresh-token" not in sealed.ciphertext
    assert keys.open(sealed, user_id=USER, kind=KIND) == SECRET_TOKEN
    again = keys.seal(SECRET_TOKEN, user_id=USER, kind=KIND)
    assert again.nonce != sealed.nonce  # a fresh nonce each time
    assert again.ciphertext != sealed.ciphertext


def test_a_ciphertext_copied_to_another_users_row_or_kind_is_refused() -> None:
    keys = ring(new_key())
    sealed = keys.seal(SECRET_TOKEN, user_id=USER, kind=KIND)
    with pytest.raises(TokenAuthenticationError, match=r"stored token for mallory@example\.org"):
        keys.open(sealed, user_id="mallory@example.org", kind=KIND)
    with pytest.raises(TokenAuthenticationError):
        keys.open(sealed, user_id=USER, kind="service_account")


@pytest.mark.parametrize("part", ["ciphertext", "nonce"])
def test_a_tampered_row_is_refused_with_a_clear_message(part: str) -> None:
    keys = ring(new_key())
    sealed = keys.seal(SECRET_TOKEN, user_id=USER, kind=KIND)
    value = bytearray(getattr(sealed, part))
    value[0] ^= 0x01
    tampered = dataclasses.replace(sealed, **{part: bytes(value)})
    with pytest.raises(TokenAuthenticationError) as caught:
        keys.open(tampered, user_id=USER, kind=KIND)
    message = str(caught.value)
    assert message.startswith(
        f"the stored token for {USER} failed authentication: altered, or written under another key"
    )
    assert "secret" not in message
    assert caught.value.retry_class is RetryClass.PERMANENT
    assert isinstance(caught.value, CredentialsError)


def test_a_nonce_of_the_wrong_size_is_an_authentication_failure_too() -> None:
    keys = ring(new_key())
    sealed = keys.seal(SECRET_TOKEN, user_id=USER, kind=KIND)
    with pytest.raises(TokenAuthenticationError):
        keys.open(dataclasses.replace(sealed, nonce=b"\x00" * 3), user_id=USER, kind=KIND)


def test_earlier_keys_keep_opening_until_rotation_and_the_current_one_seals() -> None:
    old, new = new_key(), new_key()
    before = ring(old).seal(SECRET_TOKEN, user_id=USER, kind=KIND)

    rotating = ring(new, old)  # new current, old previous
    assert rotating.open(before, user_id=USER, kind=KIND) == SECRET_TOKEN
    assert rotating.needs_rotation(before)
    after = rotating.seal(rotating.open(before, user_id=USER, kind=KIND), user_id=USER, kind=KIND)
    assert after.key_id == parse_key(new).key_id
    assert not rotating.needs_rotation(after)

    only_new = ring(new)
    assert only_new.open(after, user_id=USER, kind=KIND) == SECRET_TOKEN
    with pytest.raises(UnknownTokenKeyError) as caught:
        only_new.open(before, user_id=USER, kind=KIND)
    message = str(caught.value)
    assert parse_key(old).key_id in message
    assert "INBOXFLOW_TOKEN_KEY" in message
    assert "INBOXFLOW_TOKEN_PREVIOUS_KEYS" in message
    assert old not in message
    assert new not in message


def test_a_wrong_key_whose_id_is_forged_is_refused_as_altered() -> None:
    right, wrong = new_key(), new_key()
    sealed = ring(right).seal(SECRET_TOKEN, user_id=USER, kind=KIND)
    forged = Sealed(parse_key(wrong).key_id, sealed.nonce, sealed.ciphertext)
    with pytest.raises(TokenAuthenticationError):
        ring(wrong).open(forged, user_id=USER, kind=KIND)


def test_no_key_configured_says_which_variable_to_set() -> None:
    sealed = ring(new_key()).seal(SECRET_TOKEN, user_id=USER, kind=KIND)
    empty = KeyRing(None)
    with pytest.raises(TokenKeyMissingError) as reading:
        empty.open(sealed, user_id=USER, kind=KIND)
    assert str(reading.value).startswith("INBOXFLOW_TOKEN_KEY is not set")
    assert sealed.key_id in str(reading.value)
    with pytest.raises(TokenKeyMissingError, match=r"^INBOXFLOW_TOKEN_KEY is not set"):
        empty.seal(SECRET_TOKEN, user_id=USER, kind=KIND)


def test_a_read_only_ring_opens_with_previous_keys_but_does_not_seal() -> None:
    old = new_key()
    sealed = ring(old).seal(SECRET_TOKEN, user_id=USER, kind=KIND)
    read_only = ring(old, current=False)
    assert read_only.open(sealed, user_id=USER, kind=KIND) == SECRET_TOKEN
    with pytest.raises(TokenKeyMissingError):
        read_only.seal(SECRET_TOKEN, user_id=USER, kind=KIND)


def test_the_rings_environment_spelling_takes_comma_separated_previous_keys() -> None:
    current, first, second = new_key(), new_key(), new_key()
    keys = KeyRing.from_text(current, f" {first} , {second},")
    assert keys.key_ids == [parse_key(k).key_id for k in (current, first, second)]
    assert KeyRing.from_text(None, None).key_ids == []
    with pytest.raises(TokenKeyFormatError, match="INBOXFLOW_TOKEN_PREVIOUS_KEYS is not"):
        KeyRing.from_text(current, "garbage")


def test_a_stored_credential_round_trips_with_its_scope() -> None:
    keys = ring(new_key())
    info = {"refresh_token": "1//r", "client_id": "c", "client_secret": "s"}
    scope = "https://www.googleapis.com/auth/gmail.metadata"
    sealed = seal_credential(keys, USER, CredentialKind.AUTHORIZED_USER, scope, info)
    assert open_credential(keys, USER, CredentialKind.AUTHORIZED_USER, sealed) == (scope, info)
    with pytest.raises(TokenAuthenticationError):
        open_credential(keys, USER, CredentialKind.SERVICE_ACCOUNT, sealed)
