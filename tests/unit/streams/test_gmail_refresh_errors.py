"""A failed token refresh becomes the right failure class, with Google's words and no token."""

from __future__ import annotations

import pytest
from google.auth import exceptions as auth_exceptions

from schemas.errors import (
    AccountRevokedError,
    CredentialsError,
    InboxflowError,
    RetryClass,
    TransientError,
)
from streams.stages.gmail.errors import refresh_failure

USER = "ada@example.org"


def refused(error: str, description: str, *, retryable: bool = False) -> Exception:
    body = {"error": error, "error_description": description}
    return auth_exceptions.RefreshError(f"{error}: {description}", body, retryable=retryable)


@pytest.mark.parametrize(
    ("exc", "expected", "text"),
    [
        (
            refused("invalid_grant", "Token has been expired or revoked."),
            AccountRevokedError,
            "invalid_grant: Token has been expired or revoked.",
        ),
        (refused("invalid_grant", "Invalid JWT Signature."), AccountRevokedError, "Invalid JWT"),
        (
            refused("unauthorized_client", "Client is unauthorized to retrieve access tokens"),
            CredentialsError,
            "domain-wide delegation",
        ),
        (refused("invalid_client", "Unauthorized"), CredentialsError, "invalid_client"),
        (
            refused("server_error", "try again", retryable=True),
            TransientError,
            "server_error: try again",
        ),
        (
            auth_exceptions.RefreshError("not json from the token endpoint"),
            CredentialsError,
            "not json",
        ),
        (auth_exceptions.TransportError("connection refused"), TransientError, "unreachable"),
    ],
)
def test_refresh_failures_are_classified(
    exc: Exception, expected: type[InboxflowError], text: str
) -> None:
    error = refresh_failure(exc, USER)
    assert type(error) is expected
    assert USER in str(error)
    assert text in str(error)


def test_a_revoked_grant_is_permanent_and_says_how_to_grant_again() -> None:
    error = refresh_failure(refused("invalid_grant", "Token has been expired or revoked."), USER)
    assert error is not None
    assert error.retry_class is RetryClass.PERMANENT
    assert f"inboxflow accounts add {USER} --oauth" in str(error)


def test_other_exceptions_are_not_refresh_failures() -> None:
    assert refresh_failure(ValueError("bug"), USER) is None
    assert refresh_failure(ConnectionResetError(), USER) is None
