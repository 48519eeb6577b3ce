"""Deployment: the drain on SIGTERM (unit tier: a real media server on loopback, Triton
at a closed port), and the deploy/ files validated offline (compose against the compose
schema, Kustomize rendered by kubectl and checked by kubernetes-validate, cross references
to the code: ports, RTMEDIA_* names, files)."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from streaming.server import SESSIONS, drain
from tests.test_auth import KEY, keyed_settings, serve

AUTH_HEADERS = {"Authorization": "Bearer " + KEY}


async def _created(ws) -> dict:
    event = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert event["type"] == "session.created"
    return event


async def test_drain_refuses_new_sessions_and_lets_open_ones_finish(tmp_path):
    async with serve(keyed_settings(tmp_path)) as s:
        async with s.client.get(s.http + "/readyz") as r:
            assert r.status == 503  # no Triton here; the point is what changes below
            assert "draining" not in await r.json()
        async with websockets.connect(s.ws, additional_headers=AUTH_HEADERS) as ws:
            await _created(ws)
            task = asyncio.create_task(drain(s.app, grace_s=30))
            await asyncio.sleep(0.2)
            async with s.client.get(s.http + "/readyz") as r:
                assert r.status == 503 and (await r.json())["draining"] is True
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(s.ws, additional_headers=AUTH_HEADERS):
                    pass
            assert refused.value.response.status_code == 503
            async with s.client.post(s.http + "/v1/realtime/calls", data="v=0\r\nm=audio",
                                     headers=AUTH_HEADERS) as r:
                assert r.status == 503 and (await r.json())["error"]["code"] == "draining"
            # the open session still works
            await ws.send(json.dumps({"type": "session.update", "session": {
                "type": "realtime", "instructions": "Be brief."}}))
            updated = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert updated["type"] == "session.updated"
            assert not task.done()
        # the client hung up: the drain ends well before its grace period
        assert await asyncio.wait_for(task, 5) == 0
        assert not s.app[SESSIONS]


async def test_drain_grace_expires_with_a_shutdown_error(tmp_path):
    async with serve(keyed_settings(tmp_path)) as s:
        async with websockets.connect(s.ws, additional_headers=AUTH_HEADERS) as ws:
            await _created(ws)
            assert await drain(s.app, grace_s=0.5) == 1
            event = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert event["type"] == "error"
            assert event["error"]["code"] == "server_shutdown"
