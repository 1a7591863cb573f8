"""HTTPS to SNS: signing certificates and subscription confirmations.

Only URLs that passed `intake.sns.check_url` get here (https, a host matching
`sns.cert_host_pattern`). Certificates are cached (bounded LRU, TTL) and fetched once
per URL however many requests wait for them; a URL that answered with something that is
not a certificate is remembered briefly, so forged messages cannot make us hammer it.

Errors: `errors.IntakeError` (403) when the certificate is refused for good (4xx, too
large, not an RSA certificate); `errors.TemporaryError` when it may work later (timeout,
connection, 5xx) — the intake answers 503 and SNS retries.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import re
import ssl
import time
from collections.abc import Callable

import aiohttp
import structlog
import yarl
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from remediator import __version__, errors
from remediator.settings import Sns

log = structlog.get_logger(__name__)

CERT_CACHE_SIZE = 64
"""Certificates kept; SNS uses one per region at a time, so a handful in practice."""
CERT_TTL = 6 * 3600.0
"""Seconds a fetched certificate is trusted without asking again (SNS rotates rarely)."""
REFUSED_TTL = 60.0
"""Seconds a URL that served no usable certificate is refused without asking again."""
MAX_CERT_BYTES = 64 * 1024
MAX_CONFIRM_BYTES = 64 * 1024
MAX_INFLIGHT = 8
"""Distinct downloads at once of certificates not fetched before; beyond that, 503 (SNS
retries). The refetch of one that was good (its TTL over) is never refused for it."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Cached:
    key: rsa.RSAPublicKey | None
    refused: str
    expires: float


class SnsClient:
    """Certificate fetches and subscription confirmations over one aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        timeout: float,
        fetched: Callable[[str], None] = lambda result: None,
    ) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0))
        self._fetched = fetched
        self._cache: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        # Refusals are kept apart and bounded on their own: a flood of forged URLs that
        # fail must never push a good signing key out of the cache.
        self._refused: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        self._inflight: dict[str, asyncio.Task[rsa.RSAPublicKey]] = {}

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        await self._session.close()

    async def public_key(self, url: yarl.URL) -> rsa.RSAPublicKey:
        """The RSA public key of the certificate at `url`, from the cache if fresh."""
        key = _key(url)
        hit = self._cache.get(key) or self._refused.get(key)
        if hit is not None and hit.expires > time.monotonic():
            if hit.key is None:
                raise errors.IntakeError(hit.refused, status=403)
            self._cache.move_to_end(key)
            return hit.key
        task = self._inflight.get(key)
        if task is None:
            # The cap is for URLs never seen good (a forger can name any number of them);
            # a certificate that verified before is always asked again when its TTL ends,
            # or made-up URLs holding every download would turn away every genuine message.
            if len(self._inflight) >= MAX_INFLIGHT and key not in self._cache:
                raise errors.TemporaryError("too many signing certificate downloads at once")
            task = asyncio.create_task(self._fetch(url), name="sns-cert-fetch")
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        # Shielded: one waiting request going away must not cancel the others' download.
        return await asyncio.shield(task)

    def _done(self, key: str, task: asyncio.Task[rsa.RSAPublicKey]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone away

    def _remember(self, key: str, entry: _Cached) -> None:
        table = self._cache if entry.key is not None else self._refused
        table[key] = entry
        table.move_to_end(key)
        while len(table) > CERT_CACHE_SIZE:
            table.popitem(last=False)

    async def _fetch(self, url: yarl.URL) -> rsa.RSAPublicKey:
        key = _key(url)
        try:
            status, body = await self._get(url, limit=MAX_CERT_BYTES, what="signing certificate")
        except errors.RemediatorError as exc:
            self._fetched("error")
            log.warning("sns_cert_fetch_failed", url=key, error=str(exc))
            if isinstance(exc, errors.IntakeError):
                self._remember(key, _Cached(None, str(exc), time.monotonic() + REFUSED_TTL))
            raise
        try:
            public_key = _rsa_key(status, body)
        except errors.IntakeError as exc:
            self._fetched("error")
            log.warning("sns_cert_refused", url=key, error=str(exc))
            self._remember(key, _Cached(None, str(exc), time.monotonic() + REFUSED_TTL))
            raise
        self._fetched("ok")
        log.info("sns_cert_fetched", url=key)
        self._remember(key, _Cached(public_key, "", time.monotonic() + CERT_TTL))
        return public_key

    async def confirm(self, url: yarl.URL) -> str:
        """GET a SubscribeURL; returns the SubscriptionArn SNS answers with ("" if none).
        Any failure is a TemporaryError: the intake answers 503 so that SNS re-sends."""
        try:
            status, body = await self._get(url, limit=MAX_CONFIRM_BYTES, what="SubscribeURL")
        except errors.RemediatorError as exc:
            raise errors.TemporaryError(str(exc)) from exc
        if status != 200:
            raise errors.TemporaryError(f"SubscribeURL: HTTP {status}")
        found = re.search(rb"<SubscriptionArn>([^<]{1,512})</SubscriptionArn>", body)
        return found.group(1).decode("utf-8", "replace") if found else ""

    async def _get(self, url: yarl.URL, *, limit: int, what: str) -> tuple[int, bytes]:
        """GET without redirects (a redirect could leave the checked host), body bounded."""
        try:
            async with self._session.get(url, timeout=self._timeout, allow_redirects=False) as resp:
                status = resp.status
                if status == 429 or status >= 500:
                    raise errors.TemporaryError(f"{what}: HTTP {status}")
                if (resp.content_length or 0) > limit:
                    raise errors.IntakeError(f"{what}: larger than {limit} bytes", status=403)
                body = bytearray()
                async for chunk in resp.content.iter_chunked(16384):
                    body += chunk
                    if len(body) > limit:
                        raise errors.IntakeError(f"{what}: larger than {limit} bytes", status=403)
        except TimeoutError as exc:
            timeout = self._timeout.total or 0.0
            raise errors.TemporaryError(
                f"{what}: no answer within {timeout:.0f}s (sns.timeout)"
            ) from exc
        except aiohttp.ClientError as exc:
            raise errors.TemporaryError(f"{what}: {type(exc).__name__}: {exc}") from exc
        return status, bytes(body)


def _key(url: yarl.URL) -> str:
    """One cache entry per host, port and path (queries and fragments are refused before)."""
    return f"{url.host}:{url.port}{url.raw_path}"


def _rsa_key(status: int, body: bytes) -> rsa.RSAPublicKey:
    if status != 200:
        raise errors.IntakeError(f"signing certificate: HTTP {status}", status=403)
    try:
        public_key = x509.load_pem_x509_certificate(body).public_key()
    except Exception as exc:  # whatever the server sent (or its key type), it is no certificate
        raise errors.IntakeError("signing certificate: not a PEM certificate", status=403) from exc
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise errors.IntakeError("signing certificate: not an RSA key", status=403)
    return public_key


async def open_client(settings: Sns, *, fetched: Callable[[str], None]) -> SnsClient:
    """A client whose TLS trusts the system store, or only `sns.ca_file` when set."""
    cafile = str(settings.ca_file) if settings.ca_file is not None else None
    # Loading a trust store reads files: keep it off the event loop.
    context = await asyncio.to_thread(ssl.create_default_context, cafile=cafile)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=16),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": f"remediator/{__version__}"},
        trust_env=False,
    )
    return SnsClient(session, timeout=settings.timeout, fetched=fetched)
