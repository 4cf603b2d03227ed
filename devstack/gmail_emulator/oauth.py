"""Google's OAuth 2.0 side, as the emulator plays it: consent, tokens, revocation, bearer checks.

Enough of accounts.google.com and oauth2.googleapis.com for google-auth and google-auth-oauthlib
to run unchanged against the emulator:

* ``GET /o/oauth2/auth``: the consent screen, consented at once by a configured user
  (``consent_as``) or the ``login_hint``; 302 to the loopback ``redirect_uri`` with ``code`` and
  ``state`` (PKCE ``S256``/``plain`` checked at the token endpoint).
* ``POST /token``: ``authorization_code`` (client id and secret by Basic auth or in the body,
  same ``redirect_uri``, single-use code), ``refresh_token``, and the service accounts'
  ``urn:ietf:params:oauth:grant-type:jwt-bearer`` (RS256 JWT signed by a key this emulator issued,
  ``sub`` = the impersonated user, scopes within the domain-wide delegation). Errors have Google's
  shape: ``{"error": "invalid_grant", "error_description": "Token has been expired or revoked."}``.
* ``POST /revoke?token=``: revokes a refresh token, or an access token and the grant behind it.

With ``OAuthConfig.require_auth`` (off by default: the emulator is anonymous), every Gmail call
must carry ``Authorization: Bearer`` with a live access token of the mailbox in its path: 401 in
Google's shape otherwise, 403 when a ``gmail.metadata`` token asks for ``raw``/``full`` or ``q``,
as Gmail does. Thread-safe; pure of HTTP framing (``server.py`` adds that). Must not import
``streams``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import exceptions as auth_exceptions
from google.auth import jwt

AUTH_PATH = "/o/oauth2/auth"
TOKEN_PATH = "/token"  # noqa: S105 - a path, not a secret
REVOKE_PATH = "/revoke"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth signs service-account assertions for Google's token endpoint, whatever token_uri
# the key file names; Google checks exactly this audience.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL
SCOPE_ROOT = "https://www.googleapis.com/auth/"
READONLY = SCOPE_ROOT + "gmail.readonly"
METADATA = SCOPE_ROOT + "gmail.metadata"
MODIFY = SCOPE_ROOT + "gmail.modify"
FULL_ACCESS = "https://mail.google.com/"
# Scopes that read message content; gmail.metadata alone reads ids, labels and headers only.
_CONTENT_SCOPES = frozenset(
    {READONLY, MODIFY, FULL_ACCESS, SCOPE_ROOT + "gmail.compose", SCOPE_ROOT + "gmail.send"}
)
_WRITE_SCOPES = frozenset({MODIFY, FULL_ACCESS, SCOPE_ROOT + "gmail.insert"})
_WRITE_METHODS = frozenset({"users.messages.insert", "users.messages.import"})
_CONTENT_METHODS = frozenset({"users.messages.get", "users.threads.get"})
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_AUTH_HELP = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)

Json = dict[str, Any]


@dataclass(frozen=True)
class OAuthConfig:
    """How the emulator's OAuth side behaves.

    Attributes:
        require_auth: Gmail calls need a bearer access token for their mailbox (off: anonymous).
        access_token_lifetime_seconds: ``expires_in`` of issued access tokens (Google: 3599).
            google-auth refreshes a token 225 s before it expires, so anything shorter makes it
            refresh before every call (and google-api-python-client before every batch part).
        code_lifetime_seconds: how long an authorization code can be exchanged.
    """

    require_auth: bool = False
    access_token_lifetime_seconds: int = 3599
    code_lifetime_seconds: int = 600


@dataclass
class OAuthStats:
    """What the OAuth side did; ``OAuthServer.stats`` returns a copy.

    Attributes:
        consents: authorization requests answered with a code.
        grants: tokens issued per grant type (``authorization_code``, ``refresh_token``,
            ``jwt_bearer``).
        refused: token requests refused, per ``<grant type>:<error>``.
        revocations: grants revoked (endpoint or ``revoke``).
        unauthenticated: Gmail calls refused 401.
        forbidden: Gmail calls refused 403 (another mailbox, or beyond the token's scope).
    """

    consents: int = 0
    grants: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    revocations: int = 0
    unauthenticated: int = 0
    forbidden: int = 0


@dataclass(frozen=True)
class Authorized:
    """A Gmail call's bearer token checked out: the mailbox it may read and its scopes."""

    user: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class AuthFailure:
    """A Gmail call refused: status, Google's error body, headers."""

    status: int
    body: Json
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Client:
    client_id: str
    client_secret: str


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    user: str
    scopes: tuple[str, ...]
    offline: bool
    challenge: str | None
    challenge_method: str
    expires_at: float
    used: bool = False


@dataclass
class _Grant:
    """One user's consent to one client: what a refresh token stands for."""

    client_id: str
    user: str
    scopes: tuple[str, ...]
    revoked: bool = False


@dataclass
class _AccessToken:
    user: str
    scopes: frozenset[str]
    expires_at: float
    refresh_token: str | None  # the grant it came from; None for service accounts
    revoked: bool = False


@dataclass
class _ServiceAccount:
    email: str
    key_id: str
    public_pem: bytes
    delegated_scopes: frozenset[str]
    key_deleted: bool = False


class _TokenError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class OAuthServer:
    """Google's authorization server and token checks for one emulator.

    Args:
        config: knobs (anonymous Gmail calls by default).
        has_mailbox: whether an address has a mailbox here (service-account subjects must).
    """

    def __init__(
        self, config: OAuthConfig | None = None, *, has_mailbox: Callable[[str], bool]
    ) -> None:
        self.config = config or OAuthConfig()
        self.base_url = "http://127.0.0.1/"  # set by the server once its port is bound
        self._has_mailbox = has_mailbox
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._codes: dict[str, _Code] = {}
        self._grants: dict[str, _Grant] = {}  # refresh token -> grant
        self._access: dict[str, _AccessToken] = {}
        self._service_accounts: dict[str, _ServiceAccount] = {}  # key id -> account
        self._consent_as: str | None = None
        self._stats = OAuthStats()

    # -- knobs and test helpers ----------------------------------------------------------------

    def configure(self, config: OAuthConfig) -> None:
        """Replace the knobs; issued tokens stay valid until their own expiry."""
        self.config = config

    @property
    def require_auth(self) -> bool:
        """Whether Gmail calls need a bearer token."""
        return self.config.require_auth

    @property
    def token_url(self) -> str:
        """The token endpoint (what a client file's ``token_uri`` names)."""
        return self.base_url + TOKEN_PATH.lstrip("/")

    @property
    def auth_url(self) -> str:
        """The authorization (consent) endpoint."""
        return self.base_url + AUTH_PATH.lstrip("/")

    @property
    def revoke_url(self) -> str:
        """The revocation endpoint."""
        return self.base_url + REVOKE_PATH.lstrip("/")

    @property
    def stats(self) -> OAuthStats:
        """A copy of the counters."""
        with self._lock:
            s = self._stats
            return replace(s, grants=Counter(s.grants), refused=Counter(s.refused))

    def create_client(self) -> Json:
        """Register an OAuth client; return its JSON as the Cloud console downloads it."""
        client = _Client(
            f"{secrets.randbelow(10**12):012d}-{secrets.token_hex(16)}.apps.googleusercontent.com",
            "GOCSPX-" + secrets.token_urlsafe(21),
        )
        with self._lock:
            self._clients[client.client_id] = client
        return {
            "installed": {
                "client_id": client.client_id,
                "project_id": "inboxflow-emulator",
                "auth_uri": self.auth_url,
                "token_uri": self.token_url,
                "auth_provider_x509_cert_url": self.base_url + "oauth2/v1/certs",
                "client_secret": client.client_secret,
                "redirect_uris": ["http://localhost"],
            }
        }

    def consent_as(self, user: str | None) -> None:
        """Who consents on the consent screen from now on; ``None``: the request's login_hint."""
        with self._lock:
            self._consent_as = user.lower() if user else None

    def create_service_account(
        self, email: str | None = None, *, delegated_scopes: Sequence[str] = (READONLY, METADATA)
    ) -> Json:
        """Make a service account with a fresh RSA key and domain-wide delegation of the scopes.

        Returns its key JSON in Google's format, ``token_uri`` pointing at this emulator.
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        address = email or f"sync-{secrets.token_hex(3)}@inboxflow-emulator.iam.gserviceaccount.com"
        key_id = secrets.token_hex(20)
        with self._lock:
            self._service_accounts[key_id] = _ServiceAccount(
                address, key_id, public_pem, frozenset(delegated_scopes)
            )
        return {
            "type": "service_account",
            "project_id": "inboxflow-emulator",
            "private_key_id": key_id,
            "private_key": private_pem,
            "client_email": address,
            "client_id": str(secrets.randbelow(10**21)),
            "auth_uri": self.auth_url,
            "token_uri": self.token_url,
            "auth_provider_x509_cert_url": self.base_url + "oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        }

    def delete_service_account_key(self, key_id: str) -> None:
        """Delete a service account key: assertions it signs are refused from now on."""
        with self._lock:
            self._service_accounts[key_id].key_deleted = True

    def revoke(self, user: str) -> int:
        """The user removes every app's access (Google Account, Security); return the count."""
        address = user.lower()
        with self._lock:
            tokens = [t for t, g in self._grants.items() if g.user == address and not g.revoked]
            for token in tokens:
                self._revoke_grant(token)
            return len(tokens)

    def expire_access_tokens(self, user: str | None = None) -> None:
        """Expire issued access tokens (of ``user``, or all): their next use gets a 401."""
        with self._lock:
            for token in self._access.values():
                if user is None or token.user == user.lower():
                    token.expires_at = 0.0

    def issued_tokens(self) -> set[str]:
        """Every access and refresh token issued so far (tests search logs for them)."""
        with self._lock:
            return {*self._access, *self._grants}

    def issue_access_token(self, user: str, scopes: Sequence[str] = (READONLY,)) -> str:
        """Mint an access token directly (for tests that skip the consent flow)."""
        with self._lock:
            return self._new_access_token(user.lower(), tuple(scopes), None)

    # -- the endpoints -------------------------------------------------------------------------

    def authorize(self, query: Mapping[str, str]) -> tuple[int, str, dict[str, str]]:
        """The consent screen: (302, "", Location) with a code, or (status, text) on an error."""
        client_id = query.get("client_id", "")
        redirect_uri = query.get("redirect_uri", "")
        with self._lock:
            if client_id not in self._clients:
                return 401, "Error 401: invalid_client. The OAuth client was not found.", {}
            if not _is_loopback(redirect_uri):
                return 400, "Error 400: redirect_uri_mismatch", {}
            if query.get("response_type") != "code":
                return 400, "Error 400: unsupported_response_type", {}
            scopes = tuple(query.get("scope", "").split())
            if not scopes:
                return 400, "Error 400: invalid_request. Missing required parameter: scope", {}
            user = self._consent_as or query.get("login_hint", "").lower()
            if not user:
                return 400, "no user to consent: call consent_as(user) or pass login_hint", {}
            method = query.get("code_challenge_method", "plain")
            code = "4/0" + secrets.token_urlsafe(48)
            self._codes[code] = _Code(
                client_id,
                redirect_uri,
                user,
                scopes,
                query.get("access_type") == "offline",
                query.get("code_challenge"),
                method,
                time.time() + self.config.code_lifetime_seconds,
            )
            self._stats.consents += 1
        params = {"code": code, "scope": " ".join(scopes)}
        if "state" in query:
            params["state"] = query["state"]
        separator = "&" if "?" in redirect_uri else "?"
        return 302, "", {"Location": redirect_uri + separator + urlencode(params)}

    def token(self, form: Mapping[str, str], authorization: str | None) -> tuple[int, Json]:
        """The token endpoint: (status, JSON body) for one form-encoded request."""
        grant_type = form.get("grant_type", "")
        label = "jwt_bearer" if grant_type == JWT_BEARER else grant_type
        with self._lock:
            try:
                body = self._grant(grant_type, form, authorization)
            except _TokenError as exc:
                self._stats.refused[f"{label}:{exc.error}"] += 1
                return exc.status, {"error": exc.error, "error_description": exc.description}
            self._stats.grants[label] += 1
            return 200, body

    def revoke_token(self, token: str) -> tuple[int, Json]:
        """The revocation endpoint: 200 ``{}``, or 400 ``invalid_token``."""
        with self._lock:
            if token in self._grants and not self._grants[token].revoked:
                self._revoke_grant(token)
                return 200, {}
            access = self._access.get(token)
            if access is not None and not access.revoked:
                access.revoked = True
                if access.refresh_token is not None:
                    self._revoke_grant(access.refresh_token)
                else:
                    self._stats.revocations += 1
                return 200, {}
        return 400, {"error": "invalid_token", "error_description": "Token expired or revoked"}

    def authenticate(
        self, authorization: str | None, path_user: str, method_id: str, query: Mapping[str, Any]
    ) -> Authorized | AuthFailure:
        """Check a Gmail call's bearer token against the mailbox in its path and the method."""
        scheme, _, token = (authorization or "").partition(" ")
        with self._lock:
            if scheme.lower() != "bearer" or not token.strip():
                self._stats.unauthenticated += 1
                return _unauthenticated("Login Required.", "required", missing=True)
            access = self._access.get(token.strip())
            if access is None or access.revoked or time.time() >= access.expires_at:
                self._stats.unauthenticated += 1
                return _unauthenticated("Invalid Credentials", "authError", missing=False)
            user = access.user if path_user == "me" else path_user.lower()
            refusal = None
            if user != access.user:
                refusal = f"Delegation denied for {access.user}"
            else:
                refusal = _beyond_scope(access.scopes, method_id, query)
            if refusal is not None:
                self._stats.forbidden += 1
                return _forbidden(refusal)
            return Authorized(access.user, access.scopes)

    # -- grants (under the lock) ---------------------------------------------------------------

    def _grant(self, grant_type: str, form: Mapping[str, str], authorization: str | None) -> Json:
        if grant_type == "authorization_code":
            return self._exchange_code(form, authorization)
        if grant_type == "refresh_token":
            return self._refresh(form, authorization)
        if grant_type == JWT_BEARER:
            return self._jwt_bearer(form.get("assertion", ""))
        raise _TokenError(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")

    def _client(self, form: Mapping[str, str], authorization: str | None) -> _Client:
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip()).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                decoded = ""
            client_id, _, client_secret = decoded.partition(":")
        client = self._clients.get(client_id)
        if client is None:
            raise _TokenError(401, "invalid_client", "The OAuth client was not found.")
        if not secrets.compare_digest(client.client_secret, client_secret):
            raise _TokenError(401, "invalid_client", "Unauthorized")
        return client

    def _exchange_code(self, form: Mapping[str, str], authorization: str | None) -> Json:
        client = self._client(form, authorization)
        code = self._codes.get(form.get("code", ""))
        if code is None or code.used or time.time() >= code.expires_at:
            raise _TokenError(400, "invalid_grant", "Malformed auth code.")
        if code.client_id != client.client_id:
            raise _TokenError(400, "invalid_grant", "Bad Request")
        if form.get("redirect_uri") != code.redirect_uri:
            raise _TokenError(400, "redirect_uri_mismatch", "Bad Request")
        if code.challenge is not None:
            verifier = form.get("code_verifier")
            if not verifier:
                raise _TokenError(400, "invalid_grant", "Missing code verifier.")
            if not _pkce_matches(verifier, code.challenge, code.challenge_method):
                raise _TokenError(400, "invalid_grant", "Invalid code verifier.")
        code.used = True
        refresh = None
        if code.offline:
            refresh = "1//0" + secrets.token_urlsafe(64)
            self._grants[refresh] = _Grant(client.client_id, code.user, code.scopes)
        body = self._token_body(code.user, code.scopes, refresh)
        if refresh is not None:
            body["refresh_token"] = refresh
        return body

    def _refresh(self, form: Mapping[str, str], authorization: str | None) -> Json:
        client = self._client(form, authorization)
        refresh = form.get("refresh_token", "")
        grant = self._grants.get(refresh)
        if grant is None or grant.revoked or grant.client_id != client.client_id:
            raise _TokenError(400, "invalid_grant", "Token has been expired or revoked.")
        scopes = tuple(form.get("scope", "").split()) or grant.scopes
        if not set(scopes) <= set(grant.scopes):
            raise _TokenError(400, "invalid_scope", "Bad Request")
        return self._token_body(grant.user, scopes, refresh)

    def _jwt_bearer(self, assertion: str) -> Json:
        try:
            key_id = str(jwt.decode_header(assertion).get("kid", ""))  # type: ignore[no-untyped-call]
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            raise _TokenError(400, "invalid_grant", "Invalid JWT: malformed.") from exc
        account = self._service_accounts.get(key_id)
        if account is None or account.key_deleted:
            raise _TokenError(400, "invalid_grant", "Invalid JWT Signature.")
        try:
            claims: Json = jwt.decode(  # type: ignore[no-untyped-call]
                assertion,
                certs={key_id: account.public_pem},
                audience=[GOOGLE_TOKEN_AUDIENCE, self.token_url],
                clock_skew_in_seconds=30,
            )
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            raise _TokenError(400, "invalid_grant", "Invalid JWT Signature.") from exc
        if claims.get("iss") != account.email:
            raise _TokenError(400, "invalid_grant", "Invalid JWT: iss does not match the key.")
        scopes = tuple(str(claims.get("scope", "")).split())
        if not scopes:
            raise _TokenError(400, "invalid_scope", "Invalid OAuth scope or ID token audience.")
        subject = str(claims.get("sub") or account.email).lower()
        if subject != account.email:
            if not self._has_mailbox(subject):
                raise _TokenError(400, "invalid_grant", "Invalid email or User ID")
            if not set(scopes) <= account.delegated_scopes:
                raise _TokenError(
                    401,
                    "unauthorized_client",
                    "Client is unauthorized to retrieve access tokens using this method, or "
                    "client not authorized for any of the scopes requested.",
                )
        return self._token_body(subject, scopes, None)

    def _token_body(self, user: str, scopes: tuple[str, ...], refresh: str | None) -> Json:
        return {
            "access_token": self._new_access_token(user, scopes, refresh),
            "expires_in": self.config.access_token_lifetime_seconds,
            "scope": " ".join(scopes),
            "token_type": "Bearer",
        }

    def _new_access_token(self, user: str, scopes: tuple[str, ...], refresh: str | None) -> str:
        token = "ya29." + secrets.token_urlsafe(96)
        expires_at = time.time() + self.config.access_token_lifetime_seconds
        self._access[token] = _AccessToken(user, frozenset(scopes), expires_at, refresh)
        return token

    def _revoke_grant(self, refresh: str) -> None:
        self._grants[refresh].revoked = True
        for access in self._access.values():
            if access.refresh_token == refresh:
                access.revoked = True
        self._stats.revocations += 1


def _is_loopback(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme == "http" and (parts.hostname or "") in _LOOPBACK_HOSTS


def _pkce_matches(verifier: str, challenge: str, method: str) -> bool:
    if method == "S256":
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        expected = base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
        return secrets.compare_digest(expected, challenge)
    return secrets.compare_digest(verifier, challenge)


def _beyond_scope(scopes: frozenset[str], method_id: str, query: Mapping[str, Any]) -> str | None:
    """Why a token's scopes do not allow the call, or None. Gmail's own refusals."""
    if method_id in _WRITE_METHODS:
        return None if scopes & _WRITE_SCOPES else "Request had insufficient authentication scopes."
    if scopes & _CONTENT_SCOPES:
        return None
    if METADATA not in scopes:
        return "Request had insufficient authentication scopes."
    if method_id in _CONTENT_METHODS:
        values = query.get("format") or ["full"]
        fmt = str(values[0]).lower()
        if fmt in ("raw", "full"):
            return f"Metadata scope doesn't allow format {fmt.upper()}"
    if method_id == "users.messages.list" and query.get("q"):
        return "Metadata scope does not support 'q' parameter"
    return None


def _unauthenticated(detail: str, reason: str, *, missing: bool) -> AuthFailure:
    if missing:
        message = f"Request is missing required authentication credential. {_AUTH_HELP}"
    else:
        message = f"Request had invalid authentication credentials. {_AUTH_HELP}"
    body = {
        "error": {
            "code": 401,
            "message": message,
            "errors": [
                {
                    "message": detail,
                    "domain": "global",
                    "reason": reason,
                    "location": "Authorization",
                    "locationType": "header",
                }
            ],
            "status": "UNAUTHENTICATED",
        }
    }
    challenge = 'Bearer realm="https://accounts.google.com/"'
    if not missing:
        challenge += ', error="invalid_token"'
    return AuthFailure(401, body, {"WWW-Authenticate": challenge})


def _forbidden(message: str) -> AuthFailure:
    reason = "insufficientPermissions" if "insufficient" in message else "forbidden"
    body = {
        "error": {
            "code": 403,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": "PERMISSION_DENIED",
        }
    }
    return AuthFailure(403, body)
