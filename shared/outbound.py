"""HTTP requests to addresses users supply (image URLs, webhook targets), refused where they must not go.

The guard sits where the connection is made, not only where the URL is read: the resolver that aiohttp
connects with drops every non-public address (loopback, RFC 1918, link-local incl. 169.254.169.254,
CGNAT, reserved, multicast; IPv4-mapped IPv6 judged by its IPv4), so a name that resolves to a public
address at check time and to 127.0.0.1 at connect time (DNS rebinding) still cannot reach inside.
Literal IP hosts skip aiohttp's resolver, so :func:`check_url` judges them before any request, and
redirects are followed by hand, each hop checked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from shared.config import OutboundSettings
from shared.exceptions import FetchRefused

# IPv6 forms that carry an IPv4 address a gateway may deliver to (RFC 6052 NAT64, RFC 3056 6to4, the
# deprecated IPv4-compatible ::a.b.c.d). Python 3.11 calls all of them global, so 64:ff9b::a00:1 passed
# although a NAT64 gateway (AWS's, for one) delivers it to 10.0.0.1 inside the network.
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # operator-chosen layout (RFC 8215): never public
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64_WELL_KNOWN or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL_USE:
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return embedded.is_global and not embedded.is_multicast
    return ip.is_global and not ip.is_multicast


def check_url(url: str, policy: OutboundSettings) -> str:
    """``url`` if the policy lets it be contacted (before DNS: scheme, port, literal IPs); else FetchRefused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchRefused(f"malformed URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise FetchRefused(f"only http and https URLs are fetched, not {parts.scheme or 'a bare path'!r}")
    host = parts.hostname
    if not host:
        raise FetchRefused("the URL names no host")
    if parts.username or parts.password:
        raise FetchRefused("URLs with credentials are refused")
    port = port or (443 if parts.scheme == "https" else 80)
    if policy.allowed_ports and port not in policy.allowed_ports:
        raise FetchRefused(f"port {port} is not allowed (allowed: {', '.join(map(str, policy.allowed_ports))})")
    # Judged as the client will connect: yarl (aiohttp's URL) normalises the host (IDNA maps fullwidth
    # digits and ideographic full stops to ASCII), so 'http://１２７.0.0.1/' reaches the literal 127.0.0.1,
    # which skips the resolver below; urlsplit's hostname alone is not an IP and was let through.
    try:
        connect_host = yarl.URL(url).host or host
    except (ValueError, UnicodeError) as exc:
        raise FetchRefused(f"malformed URL: {exc}") from None
    for candidate in dict.fromkeys((host, connect_host)):
        if _legacy_ipv4(candidate):
            raise FetchRefused(f"{host} is an IPv4 address in a legacy form: write it as four decimal numbers")
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(candidate)
            if not policy.allow_private_targets and not _public(candidate):
                raise FetchRefused(f"{host} is not a public address")
    return url


def _legacy_ipv4(host: str) -> bool:
    """'127.1', '2130706433', '0x7f.0.0.1', '017700000001': what inet_aton (and so getaddrinfo) reads as an
    IPv4 address but ipaddress does not. Let through as a name, such a URL was retried by webhooks for
    hours (aiohttp cannot connect to it) instead of refused once."""
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


class _PublicOnlyResolver(AbstractResolver):
    """aiohttp's threaded resolver, keeping only the addresses the policy allows."""

    def __init__(self, policy: OutboundSettings) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            found = await self._inner.resolve(host, port, family)
        except OSError as exc:
            raise FetchRefused(f"{host} does not resolve: {exc}", code="fetch_failed") from None
        if self._policy.allow_private_targets:
            return found
        kept = [r for r in found if _public(r["host"])]
        if not kept:
            raise FetchRefused(f"{host} resolves only to non-public addresses")
        return kept

    async def close(self) -> None:
        await self._inner.close()


@contextlib.asynccontextmanager
async def open_outbound(policy: OutboundSettings, *, limit: int = 32) -> AsyncIterator[aiohttp.ClientSession]:
    """A session whose connections can reach only what ``policy`` allows (one per process; reuse it)."""
    # use_dns_cache=False: every new connection asks the resolver, so a receiver that moves is found at
    # once and a name that turns private is refused then. ttl_dns_cache=None, as before, means "never
    # expire" in aiohttp: a webhook receiver behind a failed-over address was retried at its old one for
    # all 10 attempts. Pooled keep-alive connections still spare the lookup for repeat requests.
    connector = aiohttp.TCPConnector(resolver=_PublicOnlyResolver(policy), limit=limit, use_dns_cache=False)
    # trust_env=False: an HTTP(S)_PROXY in the environment would connect on our behalf, past the resolver.
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        yield session


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str | None
    url: str  # after redirects


async def fetch_bytes(
    session: aiohttp.ClientSession,
    url: str,
    *,
    policy: OutboundSettings,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int = 3,
) -> Fetched:
    """GET ``url`` (redirects followed by hand, each hop checked), at most ``max_bytes`` within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            for _ in range(max_redirects + 1):
                check_url(url, policy)
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    if resp.status != 200:
                        raise FetchRefused(f"{_short(url)} answered HTTP {resp.status}", code="fetch_failed")
                    declared = resp.content_length
                    if declared is not None and declared > max_bytes:
                        raise FetchRefused(f"the image at the URL exceeds {max_bytes} bytes", code="too_large")
                    data = await _read_capped(resp, max_bytes)
                    return Fetched(data=data, content_type=resp.content_type, url=url)
            raise FetchRefused(f"more than {max_redirects} redirects", code="fetch_failed")
    except TimeoutError:
        raise FetchRefused(f"{_short(url)} did not deliver within {timeout_s:g} s", code="fetch_failed") from None
    except aiohttp.ClientError as exc:
        raise FetchRefused(f"{_short(url)} could not be fetched: {exc}", code="fetch_failed") from None


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise FetchRefused(f"the image at the URL exceeds {max_bytes} bytes", code="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _short(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path[:80]}"
