"""The client's address behind a reverse proxy (nginx/, an ingress).

Behind a proxy every request comes from the proxy's address, so per-address limits
(wrong credentials, streaming.auth.FailedAttempts) and log lines would treat all clients
as one. For requests whose peer is a trusted proxy (``RTMEDIA_TRUSTED_PROXIES``, CIDRs),
the client is the right-most address of ``X-Forwarded-For`` that is not itself a trusted
proxy (``X-Real-IP`` when there is none); from any other peer these headers are ignored,
so a client cannot choose its own address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]


def _ip(text: str):
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(address, networks: list[Network]) -> bool:
    return address is not None and any(address in n for n in networks)


def client_address(peer: str | None, headers, networks: list[Network]) -> str | None:
    """The client's address for a request from ``peer``; None: keep the peer's."""
    if not networks or not _trusted(_ip(peer or ""), networks):
        return None
    hops = [h for part in headers.getall("X-Forwarded-For", ()) for h in part.split(",")]
    for hop in reversed(hops):
        address = _ip(hop)
        if address is None:
            return None  # a malformed chain: trust none of it
        if not _trusted(address, networks):
            return str(address)
    address = _ip(headers.get("X-Real-IP", "")) or (_ip(hops[0]) if hops else None)
    return str(address) if address is not None else None


def middleware(networks: list[Network]):
    """Outermost middleware: the request's ``remote`` becomes the client's address."""

    @web.middleware
    async def real_client(request: web.Request, handler):
        client = client_address(request.remote, request.headers, networks)
        if client is not None and client != request.remote:
            request = request.clone(remote=client)
        return await handler(request)

    return real_client
