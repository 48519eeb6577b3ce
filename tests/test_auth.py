"""Auth on every door: the API key, ephemeral client secrets, Origin, CORS, no secret in
any log. A real media server on a loopback port (its Triton is not needed to decide who
may come in: it points at a closed port), real HTTP and WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
import websockets
from aiohttp import web

from bench.stack import free_port
from streaming import auth
from streaming.server import create_app
from streaming.settings import Settings

KEY = "sk-test-" + "7f3a9c1e5b" * 3
TURN = {"urls": "turn:turn.example.org:3478", "username": "u", "credential": "turn-pass"}
STUN = {"urls": "stun:stun.example.org:3478"}
# An access-log format an operator might choose: request line and credential headers.
LOUD_ACCESS_LOG = ('%a "%r" %s "%{Authorization}i" "%{Sec-WebSocket-Protocol}i" '
                   '"%{Referer}i"')


def keyed_settings(tmp_path: Path, **changes) -> Settings:
    """Built like conftest's media_server, with an API key; Triton at a closed port."""
    return Settings().replace(**{
        "models_dir": tmp_path, "state_dir": tmp_path, "port": free_port(),
        "triton_url": f"127.0.0.1:{free_port()}", "max_sessions": 4, "api_key": KEY,
        "ice_servers": [STUN, TURN], **changes})


@contextlib.asynccontextmanager
async def serve(settings: Settings, **runner_kw):
    app = create_app(settings)
    runner = web.AppRunner(app, **runner_kw)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    http = f"http://127.0.0.1:{settings.port}"
    try:
        async with aiohttp.ClientSession() as client:
            yield SimpleNamespace(app=app, settings=settings, http=http, client=client,
                                  ws=f"ws://127.0.0.1:{settings.port}/v1/realtime")
    finally:
        await runner.cleanup()


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    async with serve(keyed_settings(tmp_path_factory.mktemp("auth"))) as s:
        yield s


async def mint(s, key: str = KEY, **body) -> dict:
    async with s.client.post(s.http + "/v1/realtime/client_secrets", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def ws_status(s, headers: dict | None = None, protocols: list[str] | None = None,
                    query: str = "") -> int:
    """101 when the upgrade is accepted (and session.created arrives), else the HTTP
    status of the refusal."""
    try:
        async with websockets.connect(s.ws + query, additional_headers=headers or {},
                                      subprotocols=protocols, open_timeout=10) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert first["type"] == "session.created"
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


async def http_status(s, method: str, path: str, headers: dict, **kw) -> tuple[int, dict]:
    async with s.client.request(method, s.http + path, headers=headers,
                                allow_redirects=False, **kw) as r:
        body = await r.read()
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        return r.status, data


# credential -> (HTTP headers, WebSocket subprotocols, query string)
async def credentials(s, kind: str) -> tuple[dict, list[str] | None, str]:
    if kind == "none":
        return {}, None, ""
    if kind == "wrong key":
        return {"Authorization": "Bearer " + KEY[:-1] + "x"}, None, ""
    if kind == "key":
        return {"Authorization": "Bearer " + KEY}, None, ""
    if kind == "key, lower-case bearer":
        return {"Authorization": "bearer " + KEY}, None, ""
    if kind == "key in ?api_key":
        return {}, None, "?api_key=" + KEY
    if kind == "key as subprotocol":
        return {}, ["realtime", auth.KEY_PROTOCOL + KEY], ""
    if kind == "client secret":
        value = (await mint(s))["value"]
        return {"Authorization": "Bearer " + value}, ["realtime", auth.KEY_PROTOCOL + value], ""
    if kind == "expired client secret":
        value = (await auth_store_mint(s, ttl_s=0.05)).value
        await asyncio.sleep(0.1)
        return {"Authorization": "Bearer " + value}, ["realtime", auth.KEY_PROTOCOL + value], ""
    raise AssertionError(kind)


async def auth_store_mint(s, ttl_s: float):
    from streaming.server import AUTH

    return await s.app[AUTH].store.mint(ttl_s)


# What each route answers per credential: "ok" = the route's own answer.
KINDS = ["none", "wrong key", "key", "key, lower-case bearer", "key in ?api_key",
         "key as subprotocol", "client secret", "expired client secret"]
FULL = {"key", "key, lower-case bearer", "key as subprotocol"}  # the API key itself
SESSION = FULL | {"client secret"}


@pytest.mark.parametrize("kind", KINDS)
async def test_auth_matrix(server, kind):
    s = server
    headers, protocols, query = await credentials(s, kind)
    if kind == "key as subprotocol":  # browsers: only the WebSocket carries it this way
        http_headers = {}
    else:
        http_headers = headers
    is_key = kind in FULL and kind != "key as subprotocol"
    may_session = kind in SESSION

    # health probes are open; readiness says ready or not, its reasons only to the key
    status, body = await http_status(s, "GET", "/healthz" + query, http_headers)
    assert status == 200
    status, body = await http_status(s, "GET", "/readyz" + query, http_headers)
    assert status == 503 and body["ready"] is False
    assert ("problems" in body) == is_key
    if not is_key:
        assert "127.0.0.1" not in json.dumps(body)

    # metrics: the key only
    status, _ = await http_status(s, "GET", "/metrics" + query, http_headers)
    assert status == (200 if is_key else 401)

    # config: open, TURN credentials only with the key or a client secret
    status, body = await http_status(s, "GET", "/v1/config" + query, http_headers)
    assert status == 200
    expect_ice = [STUN, TURN] if (is_key or kind == "client secret") else [STUN]
    assert body["ice_servers"] == expect_ice

    # minting a client secret: the key only (a secret cannot mint more)
    status, body = await http_status(s, "POST", "/v1/realtime/client_secrets" + query,
                                     http_headers, json={})
    assert status == (200 if is_key else 401), body
    if status == 401:
        assert body["error"]["code"] == "invalid_api_key"

    # WebRTC call: past auth, a body that is no SDP offer is a 400
    status, body = await http_status(s, "POST", "/v1/realtime/calls" + query,
                                     {**http_headers, "Content-Type": "application/sdp"},
                                     data="hello")
    expect = 400 if (may_session and kind != "key as subprotocol") else 401
    assert status == expect, (kind, body)

    # WebSocket
    ws_protocols = protocols if kind in ("key as subprotocol", "client secret",
                                         "expired client secret") else None
    ws_headers = {} if ws_protocols else headers
    if kind in ("client secret", "expired client secret"):
        # both ways: header and subprotocol
        assert await ws_status(s, headers=headers, query=query) == \
            (101 if may_session else 401)
    assert await ws_status(s, headers=ws_headers, protocols=ws_protocols, query=query) == \
        (101 if may_session else 401)

    # the pages are static and hold no secret
    status, _ = await http_status(s, "GET", "/index.html", {})
    assert status == 200


async def test_unauthorized_answer_says_how(server):
    async with server.client.get(server.http + "/metrics?api_key=" + KEY) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        message = (await r.json())["error"]["message"]
        assert "Authorization: Bearer" in message and "URL" in message


async def test_client_secret_shape_and_ttl(server):
    before = server.settings.client_secret_ttl_s
    secret = await mint(server)
    assert secret["value"].startswith("ek_") and len(secret["value"]) > 40
    import time
    assert 0 < secret["expires_at"] - time.time() <= before + 1
    short = await mint(server, expires_after={"anchor": "created_at", "seconds": 30},
                       session={"type": "transcription"})
    assert short["expires_at"] - time.time() <= 31
    assert short["session"] == {"type": "transcription"}
    longer = await mint(server, expires_after={"seconds": 10 ** 9})  # capped by the setting
    assert longer["expires_at"] - time.time() <= before + 1
    for bad in ({"expires_after": {"seconds": "x"}}, {"expires_after": {"anchor": "now"}},
                {"expires_after": {"seconds": 0}}, [1]):
        async with server.client.post(server.http + "/v1/realtime/client_secrets", json=bad,
                                      headers={"Authorization": "Bearer " + KEY}) as r:
            assert r.status == 400, bad
    assert secret["value"] not in {short["value"], longer["value"]}


async def test_secret_expires_with_its_ttl(tmp_path):
    async with serve(keyed_settings(tmp_path, client_secret_ttl_s=1.0)) as s:
        value = (await mint(s))["value"]
        headers = {"Authorization": "Bearer " + value}
        assert await ws_status(s, headers=headers) == 101
        await asyncio.sleep(1.2)
        assert await ws_status(s, headers=headers) == 401
        assert await ws_status(s, protocols=["realtime", auth.KEY_PROTOCOL + value]) == 401


async def test_memory_store_is_bounded():
    store = auth.MemorySecretStore(max_live=3, clock=lambda: now[0])
    now = [0.0]
    values = [(await store.mint(10)).value for _ in range(3)]
    with pytest.raises(auth.SecretStoreFull):
        await store.mint(10)
    now[0] = 11  # all expired: purged to make room
    await store.mint(10)
    assert len(store) == 1
    assert not await store.valid(values[0])
    assert not await store.valid("sk-not-a-secret")


async def test_no_auth_configured_everything_open(tmp_path):
    async with serve(keyed_settings(tmp_path, api_key=None)) as s:
        for path in ("/metrics", "/v1/config", "/healthz"):
            async with s.client.get(s.http + path) as r:
                assert r.status == 200, path
        async with s.client.get(s.http + "/readyz") as r:
            assert "problems" in await r.json()
        assert await ws_status(s) == 101
        # the pages mint without a key when there is none
        async with s.client.post(s.http + "/v1/realtime/client_secrets") as r:
            assert r.status == 200


# -- Origin and CORS ----------------------------------------------------------------------
async def test_origin_allow_list_on_websocket_and_calls(server):
    port = server.settings.port
    key = {"Authorization": "Bearer " + KEY}
    same = f"http://127.0.0.1:{port}"
    for origin, ok in [(same, True), (f"http://localhost:{port}", True),
                       ("http://127.0.0.1:5173", True), ("http://[::1]:3000", True),
                       ("https://evil.example", False), ("null", False),
                       ("http://127.0.0.1.evil.example", False)]:
        ws = await ws_status(server, headers={**key, "Origin": origin})
        assert ws == (101 if ok else 403), origin
        status, body = await http_status(server, "POST", "/v1/realtime/calls",
                                         {**key, "Origin": origin,
                                          "Content-Type": "application/sdp"}, data="x")
        assert status == (400 if ok else 403), origin
        if not ok:
            assert body["error"]["code"] == "origin_not_allowed"


async def test_origin_setting(tmp_path):
    settings = keyed_settings(tmp_path, allowed_origins=("https://app.example.com",))
    async with serve(settings) as s:
        key = {"Authorization": "Bearer " + KEY}
        assert await ws_status(s, headers={**key, "Origin": "https://app.example.com"}) == 101
        # not same-origin nor loopback any more: only what the list says
        assert await ws_status(s, headers={**key, "Origin": "http://localhost:5173"}) == 403
        assert await ws_status(s, headers={**key, "Origin": "https://app.example.com.evil"}) \
            == 403
        assert await ws_status(s, headers=key) == 101  # non-browser client: no Origin


async def test_cors_preflight(server):
    origin = "http://localhost:5173"  # a dev page on loopback: allowed by default
    ask = {"Origin": origin, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization, content-type"}
    for path in ("/v1/realtime/calls", "/v1/realtime/client_secrets", "/v1/config"):
        async with server.client.options(server.http + path, headers=ask) as r:
            assert r.status == 204, path
            assert r.headers["Access-Control-Allow-Origin"] == origin
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
            assert "Origin" in r.headers["Vary"]
    async with server.client.options(server.http + "/v1/realtime/calls",
                                     headers={**ask, "Origin": "https://evil.example"}) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
    # the actual cross-origin request carries the header, its refusals too
    async with server.client.get(server.http + "/v1/config", headers={"Origin": origin}) as r:
        assert r.headers["Access-Control-Allow-Origin"] == origin
    async with server.client.get(server.http + "/metrics", headers={"Origin": origin}) as r:
        assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == origin


# -- no secret in any log -----------------------------------------------------------------
async def test_no_secret_in_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    settings = keyed_settings(tmp_path)
    async with serve(settings, access_log_format=LOUD_ACCESS_LOG) as s:
        secret = (await mint(s))["value"]
        port = s.settings.port
        attempts = [
            ({"Authorization": "Bearer " + KEY}, None, ""),
            ({"Authorization": "bearer " + KEY + "x"}, None, ""),
            ({}, None, "?api_key=" + KEY),
            ({}, None, "?intent=transcription&api_key=" + KEY + "&key=" + secret),
            # only the credential protocol: nothing matches ours (aiohttp's WARNING case)
            ({}, [auth.KEY_PROTOCOL + KEY], ""),
            ({}, [auth.KEY_PROTOCOL + secret], ""),
            ({}, ["realtime", auth.KEY_PROTOCOL + secret], ""),
            ({}, [auth.KEY_PROTOCOL + KEY + "x"], ""),
            ({"Origin": "https://evil.example", "Authorization": "Bearer " + KEY}, None, ""),
            ({"Referer": f"http://127.0.0.1:{port}/index.html?api_key={KEY}",
              "Authorization": "Bearer " + secret}, None, ""),
        ]
        for headers, protocols, query in attempts:
            await ws_status(s, headers=headers, protocols=protocols, query=query)
        for path in ("/metrics?api_key=" + KEY, "/v1/config?token=" + secret,
                     "/readyz?client_secret=" + secret):
            async with s.client.get(s.http + path,
                                    headers={"Authorization": "Bearer " + secret}):
                pass
        async with s.client.post(s.http + "/v1/realtime/calls?api_key=" + KEY, data="x",
                                 headers={"Authorization": "Bearer " + KEY}):
            pass
        await asyncio.sleep(0.2)  # the access log line is written after the response
    # the server's records (the test's own websockets client logs what it sends)
    server_records = [r for r in caplog.records if not r.name.startswith("websockets.")]
    text = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in server_records)
    access = [r for r in caplog.records if r.name == "aiohttp.access"]
    assert len(access) >= len(attempts), "the access log was not captured"
    assert "[redacted]" in text  # what would have been there is scrubbed, not absent
    for secret_text in (KEY, KEY[8:], secret, secret[3:]):
        assert secret_text not in text
    assert not [r for r in caplog.records if r.name == "aiohttp.websocket"
                and r.levelno >= logging.WARNING and "insecure" in r.getMessage()]


def test_redaction_patterns():
    r = auth.RedactSecrets()
    r.literals.add("plainkey123")
    cases = {
        'GET /v1/realtime?api_key=abc&intent=x HTTP/1.1': "abc",
        '"Bearer sk-abc.def"': "sk-abc.def",
        "bearer sk-abc": "sk-abc",
        "['openai-insecure-api-key.sk-zz', 'realtime']": "sk-zz",
        "token ek_AbCdEfGhIjKl012 used": "ek_AbCdEfGhIjKl012",
        "?client_secret=s3cr3t": "s3cr3t",
        "key plainkey123 here": "plainkey123",
    }
    for text, secret in cases.items():
        assert secret not in r.redact(text), text
    assert r.redact("GET /v1/realtime?intent=transcription") == \
        "GET /v1/realtime?intent=transcription"


# -- the separate metrics listener --------------------------------------------------------
async def test_metrics_listener(tmp_path):
    port = free_port()
    async with serve(keyed_settings(tmp_path, metrics_port=port)) as s:
        async with s.client.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200 and "rtmedia_sessions_active" in await r.text()
        async with s.client.get(f"http://127.0.0.1:{port}/v1/config") as r:
            assert r.status == 404  # the listener serves metrics, nothing else
        async with s.client.get(s.http + "/metrics") as r:
            assert r.status == 401  # the main port still needs the key


# -- demo pages minting -------------------------------------------------------------------
async def test_demo_pages_mint(tmp_path):
    async with serve(keyed_settings(tmp_path, demo_pages_mint=True)) as s:
        same = f"http://127.0.0.1:{s.settings.port}"
        url = s.http + "/v1/realtime/client_secrets"
        async with s.client.post(url, headers={"Origin": same}) as r:
            assert r.status == 200
            value = (await r.json())["value"]
        assert await ws_status(s, protocols=["realtime", auth.KEY_PROTOCOL + value]) == 101
        # not without an Origin (no page), not for another page, not cross-site
        async with s.client.post(url) as r:
            assert r.status == 401
        async with s.client.post(url, headers={"Origin": "http://localhost:5173"}) as r:
            assert r.status == 401
        async with s.client.post(url, headers={"Origin": same,
                                               "Sec-Fetch-Site": "cross-site"}) as r:
            assert r.status == 401
        # a client secret still opens sessions only
        async with s.client.get(s.http + "/metrics",
                                headers={"Authorization": "Bearer " + value}) as r:
            assert r.status == 401
    async with serve(keyed_settings(tmp_path)) as s:  # off by default
        same = f"http://127.0.0.1:{s.settings.port}"
        async with s.client.post(s.http + "/v1/realtime/client_secrets",
                                 headers={"Origin": same}) as r:
            assert r.status == 401


def test_failed_attempts_window():
    now = [0.0]
    failures = auth.FailedAttempts(limit=3, window_s=60, max_addresses=2, clock=lambda: now[0])
    for _ in range(3):
        assert failures.retry_after("10.0.0.1") == 0
        failures.record("10.0.0.1")
        now[0] += 10
    assert failures.retry_after("10.0.0.1") == pytest.approx(30)  # first failure at 0
    assert failures.retry_after("10.0.0.2") == 0  # per address
    now[0] = 61
    assert failures.retry_after("10.0.0.1") == 0  # the oldest aged out
    failures.record("10.0.0.2")
    failures.record("10.0.0.3")  # table full: an address leaves, memory stays bounded
    assert len(failures._failures) <= 2


async def test_wrong_keys_are_rate_limited_per_address(tmp_path):
    settings = keyed_settings(tmp_path)
    async with serve(settings) as s:
        from streaming.server import AUTH

        s.app[AUTH].failures = auth.FailedAttempts(limit=5, window_s=60)
        wrong = {"Authorization": "Bearer " + KEY[:-1] + "x"}
        secrets = "/v1/realtime/client_secrets"
        codes = [(await http_status(s, "POST", secrets, wrong, json={}))[0] for _ in range(6)]
        assert codes == [401] * 5 + [429]
        status, body = await http_status(s, "POST", secrets, wrong, json={})
        assert status == 429 and body["error"]["code"] == "too_many_failed_attempts"
        assert await ws_status(s, protocols=["realtime", auth.KEY_PROTOCOL + "ek_wrong"]) == 429
        # no credential (pages, probes) is not counted and not refused
        assert (await http_status(s, "GET", "/healthz", {}))[0] == 200
