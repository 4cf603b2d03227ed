"""The OIDC verifier against a real certificates endpoint: caching, key rotation, outages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from devstack.gmail_emulator import OidcSigner
from schemas.errors import TransientError
from streams.sources.push import OidcPushVerifier, UnauthorizedPushError

AUDIENCE = "https://push.inboxflow.test/gmail/push"
ACCOUNT = "gmail-push@inboxflow-test.iam.gserviceaccount.com"


@dataclass
class CertsEndpoint:
    """Serves the certificates of ``signers``; counts fetches; ``down`` answers 500."""

    url: str = ""
    signers: list[OidcSigner] = field(default_factory=list)
    fetches: int = 0
    down: bool = False


@pytest.fixture
async def certs() -> AsyncIterator[CertsEndpoint]:
    endpoint = CertsEndpoint(signers=[OidcSigner()])

    async def serve(request: web.Request) -> web.Response:
        endpoint.fetches += 1
        if endpoint.down:
            return web.Response(status=500)
        body = {kid: pem for s in endpoint.signers for kid, pem in s.certs().items()}
        return web.json_response(body, headers={"Cache-Control": "public, max-age=3600"})

    app = web.Application()
    app.router.add_get("/oauth2/v1/certs", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    endpoint.url = f"http://127.0.0.1:{runner.addresses[0][1]}/oauth2/v1/certs"
    try:
        yield endpoint
    finally:
        await runner.cleanup()


@pytest.fixture
async def verifier(certs: CertsEndpoint) -> AsyncIterator[OidcPushVerifier]:
    checker = OidcPushVerifier(
        audience=AUDIENCE, service_account=ACCOUNT, certs_url=certs.url, refresh_floor_seconds=0
    )
    try:
        yield checker
    finally:
        await checker.close()


def bearer(signer: OidcSigner, **claims: object) -> str:
    return "Bearer " + signer.token(audience=AUDIENCE, email=ACCOUNT, **claims)


async def test_certificates_are_fetched_once_while_fresh(
    certs: CertsEndpoint, verifier: OidcPushVerifier
) -> None:
    for _ in range(5):
        claims = await verifier.verify(bearer(certs.signers[0]))
        assert claims["email"] == ACCOUNT
    assert certs.fetches == 1


async def test_a_new_signing_key_is_picked_up(
    certs: CertsEndpoint, verifier: OidcPushVerifier
) -> None:
    await verifier.verify(bearer(certs.signers[0]))
    rotated = OidcSigner()
    certs.signers.append(rotated)
    assert (await verifier.verify(bearer(rotated)))["aud"] == AUDIENCE
    assert certs.fetches == 2


async def test_an_unknown_key_refetches_at_most_once_per_floor(certs: CertsEndpoint) -> None:
    verifier = OidcPushVerifier(audience=AUDIENCE, certs_url=certs.url, refresh_floor_seconds=3600)
    try:
        await verifier.verify(bearer(certs.signers[0]))
        for _ in range(3):
            with pytest.raises(UnauthorizedPushError):
                await verifier.verify(bearer(OidcSigner()))
    finally:
        await verifier.close()
    assert certs.fetches == 1


async def test_an_outage_keeps_the_cached_certificates_or_defers(
    certs: CertsEndpoint, verifier: OidcPushVerifier
) -> None:
    certs.down = True
    with pytest.raises(TransientError, match="answered 500"):
        await verifier.verify(bearer(certs.signers[0]))
    certs.down = False
    await verifier.verify(bearer(certs.signers[0]))
    certs.down = True
    stranger = OidcSigner()
    with pytest.raises(UnauthorizedPushError):  # refetch failed: the cached keys still decide
        await verifier.verify(bearer(stranger))
    assert (await verifier.verify(bearer(certs.signers[0])))["email"] == ACCOUNT


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "no bearer token"),
        ("Basic dXNlcjpwdw==", "no bearer token"),
        ("Bearer a.b", "not a JWT"),
    ],
)
async def test_headers_without_a_usable_token_are_refused(
    verifier: OidcPushVerifier, header: str | None, reason: str
) -> None:
    with pytest.raises(UnauthorizedPushError, match=reason):
        await verifier.verify(header)
