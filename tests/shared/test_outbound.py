"""The outbound guard against real sockets: a server on loopback is unreachable under the default
policy (by literal IP, by a name that resolves to it, and through a redirect), reachable when allowed."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from shared.config import OutboundSettings
from shared.exceptions import FetchRefused
from shared.outbound import check_url, fetch_bytes, open_outbound

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 100


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def image(_: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def big(_: web.Request) -> web.StreamResponse:
        return web.Response(body=b"y" * 5000, content_type="image/png")

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query.get("to", f"http://127.0.0.1:{request.url.port}/image.png"))

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    app = web.Application()
    app.add_routes([web.get("/image.png", image), web.get("/big", big), web.get("/hop", hop), web.get("/loop", loop)])
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


DEFAULT = OutboundSettings(allowed_ports=())
OPEN = OutboundSettings(allow_private_targets=True, allowed_ports=())


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "http://user:pw@example.com/a.png",
        "http://127.0.0.1/a.png",
        "http://10.1.2.3/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        # IPv4 inside IPv6 forms a gateway delivers (NAT64, 6to4, IPv4-compatible): loopback, private, metadata.
        "http://[64:ff9b::7f00:1]/a.png",
        "http://[64:ff9b::a00:1]/a.png",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[64:ff9b:1::808:808]/a.png",
        "http://[2002:7f00:1::1]/a.png",
        "http://[2002:a9fe:a9fe::1]/a.png",
        "http://[::127.0.0.1]/a.png",
        "http://[::10.0.0.1]/a.png",
        # IPv4 in the forms inet_aton reads (getaddrinfo resolves them; aiohttp cannot connect to them).
        "http://127.1/a.png",
        "http://2130706433/a.png",
        "http://0x7f.0.0.1/a.png",
        "http://10.1/a.png",
        "http://8.8.8.010/a.png",
        "http://100.64.0.1/a.png",
        "http:///nohost",
        # Hosts the client normalises to a loopback or metadata literal (IDNA: fullwidth digits, ideographic
        # full stops), which would skip the connect-time resolver.
        "http://\uff11\uff12\uff17.0.0.1/a.png",
        "http://127\u30020\u30020\u30021/a.png",
        "http://\uff11\uff16\uff19.254.169.254/latest/meta-data/",
    ],
)
def test_refused_before_any_request(url: str) -> None:
    with pytest.raises(FetchRefused):
        check_url(url, DEFAULT)


@pytest.mark.parametrize(
    "url", ["http://[64:ff9b::808:808]/a.png", "http://[2002:808:808::1]/a.png", "http://[2606:4700::1111]/a.png"]
)
def test_public_addresses_inside_ipv6_forms_are_allowed(url: str) -> None:
    assert check_url(url, DEFAULT) == url


def test_ports_outside_the_allowed_set_are_refused() -> None:
    policy = OutboundSettings()
    assert check_url("https://example.com/a.png", policy)
    with pytest.raises(FetchRefused, match="port 6379"):
        check_url("http://example.com:6379/", policy)


async def test_loopback_is_unreachable_by_ip_by_name_and_by_redirect(server: str) -> None:
    port = server.split(":")[1]
    fullwidth = "\uff11\uff12\uff17.0.0.1"  # what the client connects to as 127.0.0.1
    async with open_outbound(DEFAULT) as session:
        for url in (
            f"http://{server}/image.png", f"http://localhost:{port}/image.png", f"http://{fullwidth}:{port}/image.png"
        ):
            with pytest.raises(FetchRefused):
                await fetch_bytes(session, url, policy=DEFAULT, max_bytes=10_000, timeout_s=5)


async def test_allowed_fetches_are_capped(server: str) -> None:
    async with open_outbound(OPEN) as session:
        got = await fetch_bytes(session, f"http://{server}/hop", policy=OPEN, max_bytes=10_000, timeout_s=5)
        assert got.data == PNG and got.url.endswith("/image.png") and got.content_type == "image/png"
        with pytest.raises(FetchRefused) as too_big:
            await fetch_bytes(session, f"http://{server}/big", policy=OPEN, max_bytes=1000, timeout_s=5)
        assert too_big.value.code == "too_large"
        with pytest.raises(FetchRefused, match="redirects"):
            await fetch_bytes(session, f"http://{server}/loop", policy=OPEN, max_bytes=1000, timeout_s=5)
        with pytest.raises(FetchRefused, match="HTTP 404"):
            await fetch_bytes(session, f"http://{server}/missing", policy=OPEN, max_bytes=1000, timeout_s=5)


async def test_every_redirect_hop_is_checked(server: str) -> None:
    port = int(server.split(":")[1])
    # The first hop's port is allowed; the redirect goes to a port that is not (say, Redis on 6379).
    policy = OutboundSettings(allow_private_targets=True, allowed_ports=(port,))
    async with open_outbound(policy) as session:
        assert (await fetch_bytes(session, f"http://{server}/hop", policy=policy, max_bytes=1000, timeout_s=5)).data
        with pytest.raises(FetchRefused, match="port 6379"):
            await fetch_bytes(
                session, f"http://{server}/hop?to=http://127.0.0.1:6379/", policy=policy, max_bytes=1000, timeout_s=5
            )


async def test_a_receiver_that_moves_is_found_at_its_new_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each new connection asks the resolver: no DNS answer outlives the address it named."""
    answer = {"ip": "127.0.0.1"}

    async def resolve(
        self: object, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[dict[str, object]]:
        found = {"hostname": host, "host": answer["ip"], "port": port, "family": socket.AF_INET}
        return [{**found, "proto": 0, "flags": 0}]

    monkeypatch.setattr("aiohttp.ThreadedResolver.resolve", resolve)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runners = {}
    for ip in ("127.0.0.1", "127.0.0.2"):
        app = web.Application()
        app.router.add_get("/image.png", lambda _, ip=ip: web.Response(body=ip.encode(), content_type="image/png"))
        runners[ip] = web.AppRunner(app)
        await runners[ip].setup()
        await web.TCPSite(runners[ip], ip, port).start()
    try:
        async with open_outbound(OPEN) as session:
            url = f"http://receiver.test:{port}/image.png"
            assert (await fetch_bytes(session, url, policy=OPEN, max_bytes=100, timeout_s=5)).data == b"127.0.0.1"
            answer["ip"] = "127.0.0.2"
            await runners.pop("127.0.0.1").cleanup()  # the old address is gone
            assert (await fetch_bytes(session, url, policy=OPEN, max_bytes=100, timeout_s=5)).data == b"127.0.0.2"
    finally:
        for runner in runners.values():
            await runner.cleanup()
