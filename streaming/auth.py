"""Who may use the media server: the API key, ephemeral client secrets, the Origin
allow-list, CORS, and keeping secrets out of logs.

Three levels of access (``Access``), decided once per request by ``Auth.identify``:

- ``KEY``: the API key (``Authorization: Bearer KEY``, ``bearer`` in any case, or the
  browser's WebSocket subprotocol ``openai-insecure-api-key.KEY``). Everything.
  With no key configured every request has this level (development).
- ``SECRET``: an ephemeral client secret (``ek_...``, from ``POST
  /v1/realtime/client_secrets``), sent the same ways. Starting sessions (WebSocket,
  WebRTC) and the full ``/v1/config`` (TURN credentials); nothing else.
- ``NONE``: health probes, the static pages, the public part of ``/v1/config``.

Credentials are never read from the URL (URLs end in access logs, browser history
and proxies). The key is compared in constant time; client secrets are kept only as
SHA-256 digests and found by digest, so neither a timing difference nor a memory dump
gives one away. ``RedactSecrets`` scrubs what aiohttp itself logs (the access log's
request line and headers, the WebSocket subprotocol warning).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from aiohttp import web

log = logging.getLogger(__name__)
KEY_PROTOCOL = "openai-insecure-api-key."
SECRET_PREFIX = "ek_"
DEFAULT_ORIGINS = ("same-origin", "loopback")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class Access(enum.IntEnum):
    NONE = 0
    SECRET = 1
    KEY = 2


# -- ephemeral client secrets ------------------------------------------------------------
@dataclass(frozen=True)
class ClientSecret:
    value: str
    expires_at: float  # unix time


class SecretStoreFull(Exception):
    pass


class SecretStore(Protocol):
    """Where client secrets live. In memory here; a Redis-backed store (``SET
    digest 1 EX ttl`` / ``EXISTS digest``) shares them between media-server replicas
    behind a load balancer with the same two methods."""

    async def mint(self, ttl_s: float) -> ClientSecret: ...

    async def valid(self, value: str) -> bool: ...


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class MemorySecretStore:
    """Client secrets of this process: digest -> expiry, at most ``max_live`` at once."""

    def __init__(self, max_live: int = 10_000, clock: Callable[[], float] = time.time):
        self.max_live = max_live
        self.clock = clock
        self._expiry: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self) -> None:
        now = self.clock()
        for digest in [d for d, t in self._expiry.items() if t <= now]:
            del self._expiry[digest]

    async def mint(self, ttl_s: float) -> ClientSecret:
        if len(self._expiry) >= self.max_live:
            self._purge()
            if len(self._expiry) >= self.max_live:
                raise SecretStoreFull(f"{self.max_live} client secrets are live")
        value = SECRET_PREFIX + secrets.token_urlsafe(32)
        expires_at = self.clock() + ttl_s
        self._expiry[_digest(value)] = expires_at
        return ClientSecret(value, expires_at)

    async def valid(self, value: str) -> bool:
        if not value.startswith(SECRET_PREFIX):
            return False
        digest = _digest(value)
        expires_at = self._expiry.get(digest)
        if expires_at is None:
            return False
        if expires_at <= self.clock():
            self._expiry.pop(digest, None)
            return False
        return True


# -- credentials in a request ------------------------------------------------------------
def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of ``Authorization: Bearer TOKEN`` (scheme in any case), or None."""
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def offered_protocols(headers: Mapping[str, str]) -> list[str]:
    return [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()]


def protocol_token(headers: Mapping[str, str]) -> str | None:
    """Browsers cannot set headers on a WebSocket: the key or client secret comes as
    the subprotocol ``openai-insecure-api-key.TOKEN`` (as with OpenAI)."""
    for proto in offered_protocols(headers):
        if proto.startswith(KEY_PROTOCOL):
            return proto[len(KEY_PROTOCOL):] or None
    return None


def without_credential_protocols(request: web.Request) -> web.Request:
    """The request with credential subprotocols removed, for the WebSocket handshake:
    aiohttp logs the offered protocols (a WARNING) when none matches its own, and
    the server must never echo a credential back as the selected protocol."""
    offered = offered_protocols(request.headers)
    kept = [p for p in offered if not p.startswith(KEY_PROTOCOL)]
    if kept == offered:
        return request
    headers = request.headers.copy()
    del headers["Sec-WebSocket-Protocol"]
    if kept:
        headers["Sec-WebSocket-Protocol"] = ", ".join(kept)
    return request.clone(headers=headers)


# -- origins -----------------------------------------------------------------------------
def _host_port(netloc: str, default_port: int) -> tuple[str, int] | None:
    try:
        parts = urlsplit("//" + netloc)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host.lower(), port or default_port


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Origins:
    """The Origin allow-list: entries ``same-origin`` (the host the request was sent
    to: a page served by this server, or by the proxy in front of it), ``loopback``
    (http(s)://localhost, 127.0.0.0/8, [::1], any port), ``*`` (any), or exact
    origins such as ``https://app.example.com``. Requests without an Origin header
    (non-browser clients) pass: Origin protects browsers' users, not the server."""

    def __init__(self, allowed: Iterable[str] = DEFAULT_ORIGINS):
        entries = [a.strip() for a in allowed if a.strip()]
        self.any = "*" in entries
        self.same_origin = "same-origin" in entries
        self.loopback = "loopback" in entries
        self.exact = {a.rstrip("/").lower() for a in entries
                      if a not in ("*", "same-origin", "loopback")}

    @staticmethod
    def is_same_origin(origin: str, request: web.Request) -> bool:
        """Same host and port as the Host header (the scheme is not compared: behind
        a TLS proxy the page is https and the request reaching us http)."""
        parts = urlsplit(origin)
        default = _DEFAULT_PORTS.get(parts.scheme)
        if default is None:
            return False
        mine = _host_port(request.host, default)
        theirs = _host_port(parts.netloc, default)
        return mine is not None and mine == theirs

    def allowed(self, origin: str | None, request: web.Request) -> bool:
        if origin is None:
            return True
        if self.any:
            return True
        if origin.rstrip("/").lower() in self.exact:
            return True
        if self.same_origin and self.is_same_origin(origin, request):
            return True
        if self.loopback:
            parts = urlsplit(origin)
            if parts.scheme in ("http", "https"):
                hp = _host_port(parts.netloc, _DEFAULT_PORTS[parts.scheme])
                if hp is not None and _is_loopback(hp[0]):
                    return True
        return False


# -- the policy --------------------------------------------------------------------------
class FailedAttempts:
    """Wrong credentials per client address: after ``limit`` within ``window_s`` the
    address gets 429 until its oldest failure ages out, so a key cannot be guessed at
    request rate. Requests without any credential are not counted (pages, probes).
    Per process and in memory; the address is the peer's (behind a proxy, the proxy's
    own address is shared, so keep the limit above what one proxy sees go wrong)."""

    def __init__(self, limit: int = 30, window_s: float = 60.0, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.limit, self.window_s, self.max_addresses = limit, window_s, max_addresses
        self._clock = clock
        self._failures: dict[str, list[float]] = {}

    def _recent(self, address: str) -> list[float]:
        cutoff = self._clock() - self.window_s
        times = [t for t in self._failures.get(address, ()) if t > cutoff]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0 when it may now."""
        if self.limit <= 0:
            return 0.0
        times = self._recent(address)
        if len(times) < self.limit:
            return 0.0
        return max(0.0, times[-self.limit] + self.window_s - self._clock())

    def record(self, address: str) -> None:
        if self.limit <= 0:
            return
        if address not in self._failures and len(self._failures) >= self.max_addresses:
            for stale in [a for a in self._failures if not self._recent(a)]:
                del self._failures[stale]
            if len(self._failures) >= self.max_addresses:  # still full: oldest out
                del self._failures[next(iter(self._failures))]
        self._failures.setdefault(address, []).append(self._clock())


class Auth:
    def __init__(self, api_key: str | None, store: SecretStore | None = None,
                 origins: Origins | None = None, demo_pages_mint: bool = False,
                 failures: FailedAttempts | None = None):
        self._key = api_key.encode("utf-8", "surrogatepass") if api_key else None
        self.store = store or MemorySecretStore()
        self.origins = origins or Origins()
        self.demo_pages_mint = demo_pages_mint
        self.failures = failures or FailedAttempts()

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def is_key(self, token: str) -> bool:
        assert self._key is not None
        return hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self._key)

    async def identify(self, request: web.Request) -> Access:
        if self._key is None:
            return Access.KEY
        token = bearer_token(request.headers)
        if token is None and request.headers.get("Upgrade", "").lower() == "websocket":
            token = protocol_token(request.headers)
        if token is None:
            return Access.NONE
        if self.is_key(token):
            return Access.KEY
        if await self.store.valid(token):
            return Access.SECRET
        return Access.NONE

    def may_mint_for_page(self, request: web.Request) -> bool:
        """``RTMEDIA_DEMO_PAGES_MINT=1``: a page served by this server may mint a client
        secret without the key. Browsers always send Origin on a POST and a page cannot
        forge it, so only this server's own pages qualify in a browser; a non-browser
        client can send any Origin, so with this setting anyone who reaches the port
        can get a short-lived secret: a demo on a trusted network, not production."""
        if not self.demo_pages_mint:
            return False
        origin = request.headers.get("Origin")
        if origin is None or not Origins.is_same_origin(origin, request):
            return False
        return request.headers.get("Sec-Fetch-Site", "same-origin") == "same-origin"


def unauthorized(message: str = "missing or invalid API key or client secret") -> web.Response:
    return web.json_response(
        {"error": {"type": "invalid_request_error", "code": "invalid_api_key",
                   "message": message + " (send `Authorization: Bearer KEY`, or the "
                   "`openai-insecure-api-key.KEY` WebSocket subprotocol; keys in the URL "
                   "are not accepted)"}},
        status=401, headers={"WWW-Authenticate": 'Bearer realm="rtmedia"'})


def too_many_failures(retry_after: float) -> web.Response:
    return web.json_response(
        {"error": {"type": "invalid_request_error", "code": "too_many_failed_attempts",
                   "message": "too many requests with a wrong API key or client secret "
                   f"from this address; retry in {retry_after:.0f} s"}},
        status=429, headers={"Retry-After": str(max(1, round(retry_after)))})


def forbidden_origin() -> web.Response:
    return web.json_response(
        {"error": {"type": "invalid_request_error", "code": "origin_not_allowed",
                   "message": "this Origin may not use the server (RTMEDIA_ALLOWED_ORIGINS)"}},
        status=403)


CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, OpenAI-Beta"


def cors_headers(origin: str, request: web.Request, preflight: bool) -> dict[str, str]:
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        asked = request.headers.get("Access-Control-Request-Headers", "")
        headers.update({"Access-Control-Allow-Methods": CORS_METHODS,
                        "Access-Control-Allow-Headers": asked or CORS_HEADERS,
                        "Access-Control-Max-Age": "600"})
    return headers


def middleware(auth: Auth, required: Callable[[web.Request], Access]):
    """Origin check, CORS and authentication for every request: ``required(request)``
    says which access the matched route needs; the access found is in
    ``request[ACCESS]`` for handlers that reveal more to more trusted callers."""

    @web.middleware
    async def guard(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if not auth.origins.allowed(origin, request):
            log.info("refused %s %s: Origin %.100r not allowed", request.method,
                     request.path, origin)
            return forbidden_origin()
        cross = origin is not None and not Origins.is_same_origin(origin, request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers=cors_headers(origin or "*", request, True))
        address = request.remote or "?"
        wait = auth.failures.retry_after(address) if _has_credential(request) else 0.0
        if wait > 0:
            return too_many_failures(wait)
        access = await auth.identify(request)
        request[ACCESS] = access
        need = required(request)
        if access < need:
            log.info("refused %s %s from %s: %s", request.method, request.path, address,
                     "credential not valid here" if _has_credential(request)
                     else "no credential")
            response: web.StreamResponse = unauthorized()
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if cross:
                    exc.headers.update(cors_headers(origin, request, False))
                raise
        if response.status == 401 and access == Access.NONE and _has_credential(request):
            auth.failures.record(address)  # a wrong credential (not a weak one)
        if cross and not response.prepared:
            response.headers.update(cors_headers(origin, request, False))
        return response

    return guard


def _has_credential(request: web.Request) -> bool:
    return (bearer_token(request.headers) or protocol_token(request.headers)) is not None


ACCESS = web.RequestKey("rtmedia_access", Access)


# -- logs --------------------------------------------------------------------------------
_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+"), r"\1 [redacted]"),
    (re.compile(re.escape(KEY_PROTOCOL) + r"[^\s\"',;\]]*"), KEY_PROTOCOL + "[redacted]"),
    (re.compile(r"\bek_[A-Za-z0-9_\-]{8,}"), "ek_[redacted]"),
    (re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access_token|secret|client_secret|"
                r"password)=)[^&\s\"]*"), r"\1[redacted]"),
]


class RedactSecrets(logging.Filter):
    """Rewrites a log record with credentials replaced by ``[redacted]``: bearer
    tokens, credential subprotocols, client secrets, secret-looking query parameters
    and the configured API keys verbatim. Installed on aiohttp's loggers (access log,
    server, websocket) and this project's, so an operator's custom access-log format
    with ``%{Authorization}i`` is scrubbed too."""

    def __init__(self) -> None:
        super().__init__()
        self.literals: set[str] = set()

    def redact(self, text: str) -> str:
        for literal in self.literals:
            text = text.replace(literal, "[redacted]")
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's business
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


REDACT = RedactSecrets()
# Filters on a logger see only the records made by that logger, not its children's.
LOGGERS = ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.websocket",
           "aiohttp.internal", "streaming.server", "streaming.auth")


def install_log_redaction(*literals: str | None) -> RedactSecrets:
    """Idempotent: one filter on each logger; ``literals`` (the API key) are added."""
    REDACT.literals.update(lit for lit in literals if lit)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if REDACT not in logger.filters:
            logger.addFilter(REDACT)
    return REDACT
