"""Unit tier: 10,000 seeded fuzz messages through the real protocol session (fakes)."""

from __future__ import annotations

import collections
import logging
import time

from streaming.realtime import Limits, RealtimeSession
from tests.fakes import FakeClock, fake_services, settle
from tests.fuzz import messages

KNOWN_CODES = {
    "invalid_json", "invalid_event", "unknown_event", "invalid_value", "invalid_session",
    "invalid_audio", "invalid_base64", "unsupported_audio_format", "unsupported_sample_rate",
    "invalid_turn_detection", "invalid_instructions", "invalid_modalities", "invalid_item",
    "text_too_long", "invalid_item_id", "invalid_audio_end_ms", "item_not_found",
    "message_too_large", "input_audio_buffer_commit_empty", "response_cancel_not_active",
    "conversation_already_has_active_response", "session_not_configured",
}


async def test_ten_thousand_fuzzed_messages_each_get_an_answer(caplog):
    clock = FakeClock()
    sent: list[dict] = []

    async def send(event: dict) -> None:
        sent.append(event)

    session = RealtimeSession(send, None, services=fake_services(clock), clock=clock,
                              limits=Limits(messages_per_s=1e9, max_message_bytes=64_000))
    await session.start()
    t0 = time.perf_counter()
    missing, must_error = [], 0
    with caplog.at_level(logging.WARNING):
        for raw, must, event_id in messages(10_000, seed=7):
            before = len(sent)
            await session.handle(raw)
            await settle(3)
            answers = sent[before:]
            if must:
                must_error += 1
                errors = [e for e in answers if e["type"] == "error"
                          and (event_id is None or e["error"]["event_id"] == event_id)]
                if not errors:
                    missing.append((raw[:200], [e["type"] for e in answers]))
    elapsed = time.perf_counter() - t0
    # the session still works after all that
    before = len(sent)
    await session.handle('{"type": "conversation.item.create", "item": {"type": "message", '
                         '"role": "user", "content": [{"type": "input_text", "text": "hi"}]}}')
    await settle()
    assert [e["type"] for e in sent[before:]] == ["conversation.item.added"]
    await session.close()
    codes = collections.Counter(e["error"]["code"] for e in sent if e["type"] == "error")
    print(f"\n10,000 fuzz messages in {elapsed:.1f} s; {must_error} bad; error codes: "
          f"{dict(codes.most_common())}")
    assert not missing, missing[:5]
    assert set(codes) <= KNOWN_CODES, set(codes) - KNOWN_CODES
    assert must_error > 7000
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, tracebacks[0].getMessage()
