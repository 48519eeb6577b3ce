"""A seeded generator of client messages for the protocol fuzz tests.

Each message comes with what must happen: ``True`` when it is bad and must be
answered by an ``error`` event (a field of a valid event replaced by a value of
the wrong type or out of range, an unknown type, broken JSON), ``None`` when it
is well formed (its handler may still refuse it, e.g. a commit with no audio).
Every message that is a JSON object carries ``event_id`` "f<N>" so the answer
can be matched to it.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator

import numpy as np

WRONG_TYPES: list = [None, True, 0, -1, 2**70, 1.5, 1e308, float("nan"), float("inf"),
                     "x", "\ud800", "", [], [[]], [1, "a"], {}, {"a": {"b": [None]}}]

AUDIO = base64.b64encode(np.zeros(480, np.int16).tobytes()).decode()


def valid_events() -> list[dict]:
    return [
        {"type": "session.update", "session": {
            "type": "realtime", "instructions": "Be brief.", "output_modalities": ["audio"],
            "temperature": 0.5, "seed": 3, "max_output_tokens": 50,
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
                                "turn_detection": {"type": "server_vad", "threshold": 0.5,
                                                   "silence_duration_ms": 400,
                                                   "prefix_padding_ms": 300}},
                      "output": {"format": {"type": "audio/pcm", "rate": 24000},
                                 "voice": "alloy"}}}},
        {"type": "input_audio_buffer.append", "audio": AUDIO},
        {"type": "input_audio_buffer.commit"},
        {"type": "input_audio_buffer.clear"},
        {"type": "response.create", "response": {"instructions": "Say hi."}},
        {"type": "response.cancel"},
        {"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Hello there"}]}},
        {"type": "conversation.item.truncate", "item_id": "item_x", "content_index": 0,
         "audio_end_ms": 100},
        {"type": "output_audio_buffer.clear"},
    ]


# (event type, path to a field, values that must be refused there)
BAD_FIELDS: list[tuple[str, tuple, list]] = [
    ("session.update", ("session",), [5, "x", [], True]),
    ("session.update", ("session", "audio"), [5, "x", [1], True]),
    ("session.update", ("session", "audio", "input"), [5, "x", [1]]),
    ("session.update", ("session", "audio", "output"), [5, "x", [1]]),
    ("session.update", ("session", "audio", "input", "format"), [5, "pcm", [1]]),
    ("session.update", ("session", "audio", "input", "format", "type"),
     ["audio/pcmu", 5, []]),
    ("session.update", ("session", "audio", "input", "format", "rate"),
     [44100, "x", 1.5, 1e308, 2**70, True, -1]),
    ("session.update", ("session", "audio", "input", "turn_detection"), [5, "x", []]),
    ("session.update", ("session", "audio", "input", "turn_detection", "type"),
     ["x", 5, []]),
    ("session.update", ("session", "audio", "input", "turn_detection", "threshold"),
     [1e308, float("nan"), float("inf"), "x", -0.5, 2, [], True]),
    ("session.update", ("session", "audio", "input", "turn_detection",
                        "silence_duration_ms"), [-1, "x", 2**70, 1.5, 0, True]),
    ("session.update", ("session", "audio", "input", "turn_detection",
                        "prefix_padding_ms"), [-1, "x", 2**70, 1.5]),
    ("session.update", ("session", "audio", "input", "turn_detection",
                        "create_response"), [5, "yes", []]),
    ("session.update", ("session", "audio", "output", "voice"), [5, [], {}]),
    ("session.update", ("session", "instructions"), [5, [], {}, "x" * 9000, "a\ud800"]),
    ("session.update", ("session", "output_modalities"),
     [[[]], "audio", [], ["video"], [1], 5]),
    ("session.update", ("session", "temperature"),
     ["hot", float("nan"), float("inf"), -1, 1e308, []]),
    ("session.update", ("session", "seed"), [2**70, -1, "x", 1.5, []]),
    ("session.update", ("session", "max_output_tokens"), [0, -5, "x", 1.5, 2**70, []]),
    ("input_audio_buffer.append", ("audio",), [5, None, [], "***", "YWJj", True]),
    ("response.create", ("response",), [5, "x", []]),
    ("response.create", ("response", "instructions"), [5, [], {}]),
    ("conversation.item.create", ("item",), [5, "x", [], None]),
    ("conversation.item.create", ("item", "type"), ["function_call", 5]),
    ("conversation.item.create", ("item", "role"), ["robot", 5, None]),
    ("conversation.item.create", ("item", "content"),
     [5, "x", [5], [{"text": 5}], [], [{"type": "input_text", "text": "y" * 5000}],
      [{"type": "input_text", "text": "\udfff"}]]),
    ("conversation.item.truncate", ("item_id",), [5, None, []]),
    ("conversation.item.truncate", ("audio_end_ms",), [-1, "x", 1.5, 2**70, None]),
]

GARBAGE = ["not json at all", "[]", "{}", '{"type": 5}', "null", '"text"', "{" * 5,
           "[" * 1000 + "]" * 1000, '{"type": "session.update", "session": ' +
           '{"a":' * 1000 + "1" + "}" * 1001, "\x00\x01", '{"type": "\\ud800"}']


def _set(event: dict, path: tuple, value) -> dict:
    obj = event
    for key in path[:-1]:
        if not isinstance(obj.get(key), dict):
            obj[key] = {}
        obj = obj[key]
    obj[path[-1]] = value
    return event


def messages(count: int, seed: int = 7) -> Iterator[tuple[str, bool | None, str | None]]:
    """(message, must_error, event_id) ``count`` times."""
    rng = random.Random(seed)
    templates = valid_events()
    by_type = {e["type"]: e for e in templates}
    for n in range(count):
        event_id = f"f{n}"
        roll = rng.random()
        if roll < 0.15:
            event = json.loads(json.dumps(rng.choice(templates)))
            event["event_id"] = event_id
            yield json.dumps(event), None, event_id
        elif roll < 0.80:
            kind, path, bad = rng.choice(BAD_FIELDS)
            event = _set(json.loads(json.dumps(by_type[kind])), path, rng.choice(bad))
            event["event_id"] = event_id
            yield json.dumps(event), True, event_id
        elif roll < 0.90:
            kind = rng.choice(["session.frobnicate", "response.audio.delta", "",
                               "x" * 300, "\ud800", "input_audio_buffer.append.extra"])
            event = {"type": kind, "event_id": event_id,
                     rng.choice(["a", "session", "audio"]): rng.choice(WRONG_TYPES)}
            yield json.dumps(event), True, event_id
        else:
            yield rng.choice(GARBAGE), True, None
