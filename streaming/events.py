"""Client events of the Realtime protocol: the one place that validates them.

``parse_event(raw, max_bytes)`` turns one client message into a typed event or
raises ``ProtocolError`` with the code and parameter path the client gets in its
``error`` event. Past this point nothing sees raw JSON: every field has its type,
numbers are finite and in range, strings and lists are bounded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from pipelines.tools import TOOL_CHOICES, Tool

MAX_DEPTH = 32  # no protocol object nests deeper than ~6
SUPPORTED_RATES = (16000, 24000)


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.param, self.type = code, message, param, type_
        self.event_id: str | None = None  # of the client event that caused it


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # a field the client did not send (None may be a value: null)


# -- the events ---------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioFormat:
    type: str  # "audio/pcm" (GA) or "pcm16" (beta)
    rate: int


@dataclass(frozen=True)
class TurnDetection:
    type: str
    threshold: float | None = None
    silence_duration_ms: int | None = None
    prefix_padding_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    eagerness: str | None = None  # semantic_vad: low | medium | high | auto


@dataclass(frozen=True)
class SessionConfig:
    type: str | None = None  # realtime | transcription
    beta_shape: bool = False  # the beta session object (modalities, input_audio_format)
    instructions: str | None = None
    output_modalities: list[str] | None = None
    input_format: AudioFormat | None = None
    output_format: AudioFormat | None = None
    voice: str | None = None
    language: str | None = None
    turn_detection: TurnDetection | _Unset | None = UNSET  # None: the client commits
    temperature: float | None = None
    seed: int | None = None
    max_output_tokens: int | None = None
    tools: tuple[Tool, ...] | None = None
    tool_choice: str | None = None  # auto | none | required | function:<name>


@dataclass(frozen=True)
class SessionUpdate:
    session: SessionConfig
    transcription_only: bool = False  # transcription_session.update


@dataclass(frozen=True)
class AudioAppend:
    audio: str  # base64, decoded by the handler (it knows the rate)


@dataclass(frozen=True)
class BufferCommit:
    pass


@dataclass(frozen=True)
class BufferClear:
    pass


@dataclass(frozen=True)
class ResponseCreate:
    instructions: str | None = None
    tools: tuple[Tool, ...] | None = None  # for this response only
    tool_choice: str | None = None


@dataclass(frozen=True)
class ResponseCancel:
    response_id: str | None = None


@dataclass(frozen=True)
class ItemCreate:
    role: str
    text: str
    item_id: str | None = None
    # input_image parts of a user message: the decoded image files (PNG/JPEG/...)
    images: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class FunctionItemCreate:
    """A ``function_call_output`` item (the client's result for a call) or a
    ``function_call`` item (a call put into the history by the client)."""

    type: str  # function_call_output | function_call
    call_id: str
    output: str = ""
    name: str = ""
    arguments: str = ""
    item_id: str | None = None


@dataclass(frozen=True)
class ItemTruncate:
    item_id: str
    audio_end_ms: int
    content_index: int = 0


@dataclass(frozen=True)
class OutputClear:
    pass


@dataclass(frozen=True)
class ClientEvent:
    type: str
    event_id: str | None
    body: Any = field(default=None)


# -- field readers --------------------------------------------------------------------------
def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _get(obj: dict, key: str, path: str, kinds: tuple[type, ...], what: str,
         code: str = "invalid_value") -> Any:
    """``obj[key]`` when present and of one of ``kinds``; UNSET when absent; None for
    null; else a ProtocolError naming the field."""
    if key not in obj:
        return UNSET
    value = obj[key]
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise ProtocolError(code, f"{_at(path, key)} must be {what}", _at(path, key))
    if not isinstance(value, kinds):
        raise ProtocolError(code, f"{_at(path, key)} must be {what}", _at(path, key))
    if isinstance(value, str):
        _utf8(value, _at(path, key), code)
    return value


def _utf8(value: str, param: str, code: str = "invalid_value") -> None:
    """JSON can carry lone surrogates ("\\ud800") that no encoder downstream accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(code, f"{param} is not valid UTF-8 text", param) from None


def _obj(obj: dict, key: str, path: str, code: str = "invalid_value") -> dict | None:
    value = _get(obj, key, path, (dict,), "an object", code)
    return None if value is UNSET else value


def _str(obj: dict, key: str, path: str, max_len: int = 200,
         code: str = "invalid_value") -> str | None:
    value = _get(obj, key, path, (str,), "a string", code)
    if value is UNSET or value is None:
        return None
    if len(value) > max_len:
        raise ProtocolError(code, f"{_at(path, key)} is longer than {max_len} characters",
                            _at(path, key))
    return value


def _int(obj: dict, key: str, path: str, lo: int, hi: int,
         code: str = "invalid_value") -> int | None:
    value = _get(obj, key, path, (int,), "an integer", code)
    if value is UNSET or value is None:
        return None
    if not lo <= value <= hi:
        raise ProtocolError(code, f"{_at(path, key)} must be in {lo}..{hi}", _at(path, key))
    return value


def _num(obj: dict, key: str, path: str, lo: float, hi: float,
         code: str = "invalid_value") -> float | None:
    value = _get(obj, key, path, (int, float), "a number", code)
    if value is UNSET or value is None:
        return None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ProtocolError(code, f"{_at(path, key)} must be a number in {lo}..{hi}",
                            _at(path, key))
    return float(value)


def _bool(obj: dict, key: str, path: str, code: str = "invalid_value") -> bool | None:
    value = _get(obj, key, path, (bool,), "true or false", code)
    return None if value is UNSET else value


# -- parsers per event ------------------------------------------------------------------------
def _format(obj: dict | None, path: str) -> AudioFormat | None:
    if obj is None:
        return None
    kind = _str(obj, "type", path, 40, "unsupported_audio_format") or "audio/pcm"
    if kind != "audio/pcm":
        raise ProtocolError("unsupported_audio_format", f"{path} type {kind!r} is not "
                            "supported; use audio/pcm", _at(path, "type"))
    rate = _get(obj, "rate", path, (int,), "an integer", "unsupported_sample_rate")
    rate = 24000 if rate in (UNSET, None) else rate
    if rate not in SUPPORTED_RATES:
        raise ProtocolError("unsupported_sample_rate", f"sample rate {rate} is not supported; "
                            "use 16000 or 24000 (PCM16 mono little-endian)",
                            _at(path, "rate"))
    return AudioFormat(kind, rate)


def _turn_detection(value: Any, path: str) -> TurnDetection | None:
    if value is None:
        return None
    code = "invalid_turn_detection"
    if not isinstance(value, dict):
        raise ProtocolError(code, 'turn_detection must be null or {"type": "server_vad", ...}',
                            path)
    kind = _str(value, "type", path, 40, code) or "server_vad"
    if kind not in ("server_vad", "semantic_vad"):
        raise ProtocolError(code, f"turn_detection type {kind!r} is not supported; use "
                            "server_vad or semantic_vad", _at(path, "type"))
    eagerness = _str(value, "eagerness", path, 16, code)
    if eagerness is not None and (kind != "semantic_vad" or
                                  eagerness not in ("low", "medium", "high", "auto")):
        raise ProtocolError(code, "eagerness is for semantic_vad and one of low, medium, "
                            "high, auto", _at(path, "eagerness"))
    return TurnDetection(
        kind, _num(value, "threshold", path, 0.0, 1.0, code),
        _int(value, "silence_duration_ms", path, 100, 5000, code),
        _int(value, "prefix_padding_ms", path, 0, 2000, code),
        _bool(value, "create_response", path, code),
        _bool(value, "interrupt_response", path, code),
        eagerness if kind == "semantic_vad" else None)


MAX_TOOLS = 64


def _name_ok(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 64 and all(
        c.isascii() and (c.isalnum() or c in "_-") for c in name)


def _tools(obj: dict, path: str) -> tuple[Tool, ...] | None:
    """``tools``: function tools with JSON-schema parameters."""
    code = "invalid_tools"
    value = _get(obj, "tools", path, (list,), "a list of function tools", code)
    if value is UNSET or value is None:
        return None
    if len(value) > MAX_TOOLS:
        raise ProtocolError(code, f"at most {MAX_TOOLS} tools", _at(path, "tools"))
    tools = []
    for i, t in enumerate(value):
        at = f"{_at(path, 'tools')}[{i}]"
        if not isinstance(t, dict):
            raise ProtocolError(code, "a tool is an object", at)
        if t.get("type", "function") != "function":
            raise ProtocolError(code, f"tool type {str(t.get('type'))[:40]!r} is not "
                                "supported; use function", f"{at}.type")
        fn = t.get("function") if isinstance(t.get("function"), dict) else t  # chat shape
        name = fn.get("name")
        if not _name_ok(name):
            raise ProtocolError(code, "a tool needs a name of 1-64 letters, digits, _ or -",
                                f"{at}.name")
        if any(x.name == name for x in tools):
            raise ProtocolError(code, f"two tools are named {name!r}", f"{at}.name")
        description = _str(fn, "description", at, 4000, code) or ""
        params = _get(fn, "parameters", at, (dict,), "a JSON schema object", code)
        if params is UNSET or params is None:
            params = {"type": "object", "properties": {}}
        if params.get("type", "object") != "object":
            raise ProtocolError(code, 'parameters must be a JSON schema of "type": "object"',
                                f"{at}.parameters")
        tools.append(Tool(name, description, params))
    return tuple(tools)


def _tool_choice(obj: dict, path: str) -> str | None:
    """``tool_choice``: "auto" | "none" | "required" | {"type": "function", "name": ...}."""
    code = "invalid_tool_choice"
    value = _get(obj, "tool_choice", path, (str, dict), 'a string or {"type": "function", '
                 '"name": ...}', code)
    if value is UNSET or value is None:
        return None
    if isinstance(value, str):
        if value not in TOOL_CHOICES:
            raise ProtocolError(code, "tool_choice must be auto, none, required or "
                                '{"type": "function", "name": ...}', _at(path, "tool_choice"))
        return value
    fn = value.get("function") if isinstance(value.get("function"), dict) else value
    if value.get("type") != "function" or not _name_ok(fn.get("name")):
        raise ProtocolError(code, 'a named tool_choice is {"type": "function", "name": ...}',
                            _at(path, "tool_choice"))
    return f"function:{fn['name']}"


def _session(s: dict, max_instructions: int) -> SessionConfig:
    path = "session"
    audio = _obj(s, "audio", path, "invalid_session") or {}
    inp = _obj(audio, "input", "session.audio", "invalid_session") or {}
    out = _obj(audio, "output", "session.audio", "invalid_session") or {}
    beta_in = _str(s, "input_audio_format", path, 40, "unsupported_audio_format")
    beta_out = _str(s, "output_audio_format", path, 40, "unsupported_audio_format")
    for name, value in (("input_audio_format", beta_in), ("output_audio_format", beta_out)):
        if value is not None and value != "pcm16":
            raise ProtocolError("unsupported_audio_format", f"{name} {value!r} is not "
                                "supported; use pcm16", _at(path, name))
    in_fmt = _format(_obj(inp, "format", "session.audio.input", "unsupported_audio_format"),
                     "session.audio.input.format")
    out_fmt = _format(_obj(out, "format", "session.audio.output", "unsupported_audio_format"),
                      "session.audio.output.format")
    if in_fmt is None and beta_in is not None:
        in_fmt = AudioFormat("pcm16", 24000)
    if out_fmt is None and beta_out is not None:
        out_fmt = AudioFormat("pcm16", 24000)

    instructions = _get(s, "instructions", path, (str,), "a string", "invalid_instructions")
    if instructions is not UNSET and instructions is not None \
            and len(instructions) > max_instructions:
        raise ProtocolError("invalid_instructions", f"instructions must be a string of at "
                            f"most {max_instructions} characters", "session.instructions")
    modalities_key = "output_modalities" if "output_modalities" in s else "modalities"
    modalities = _get(s, modalities_key, path, (list,), 'a list: ["audio"] or ["text"]',
                      "invalid_modalities")
    if modalities not in (UNSET, None) and (
            not modalities or not all(isinstance(m, str) for m in modalities)
            or not set(modalities) <= {"audio", "text"}):
        raise ProtocolError("invalid_modalities", 'output_modalities must be ["audio"] or '
                            '["text"]', _at(path, modalities_key))
    voice = _str(out, "voice", "session.audio.output", 64)
    if voice is None:
        voice = _str(s, "voice", path, 64)
    transcription_key = "input_audio_transcription"
    transcription = _obj(inp, "transcription", "session.audio.input")
    if transcription is None:
        transcription = _obj(s, transcription_key, path)
    language = _str(transcription, "language", "transcription", 16) if transcription else None
    if "turn_detection" in inp:
        td = _turn_detection(inp["turn_detection"], "session.audio.input.turn_detection")
    elif "turn_detection" in s:
        td = _turn_detection(s["turn_detection"], "session.turn_detection")
    else:
        td = UNSET
    max_tokens = _get(s, "max_output_tokens", path, (int, str), 'an integer or "inf"')
    if isinstance(max_tokens, str) and max_tokens != "inf":
        raise ProtocolError("invalid_value", 'max_output_tokens must be an integer or "inf"',
                            "session.max_output_tokens")
    if isinstance(max_tokens, int) and not 1 <= max_tokens <= 4096:
        raise ProtocolError("invalid_value", "max_output_tokens must be in 1..4096",
                            "session.max_output_tokens")
    return SessionConfig(
        type=_str(s, "type", path, 40, "invalid_session"),
        beta_shape="modalities" in s or "input_audio_format" in s,
        instructions=None if instructions is UNSET else instructions,
        output_modalities=None if modalities is UNSET else modalities,
        input_format=in_fmt, output_format=out_fmt, voice=voice, language=language,
        turn_detection=td,
        temperature=_num(s, "temperature", path, 0.0, 2.0),
        seed=_int(s, "seed", path, 0, 2**31 - 1),
        max_output_tokens=1024 if max_tokens == "inf" else
        (None if max_tokens in (UNSET, None) else max_tokens),
        tools=_tools(s, path), tool_choice=_tool_choice(s, path))


def _function_item(item: dict, max_text: int) -> FunctionItemCreate:
    kind = item["type"]
    call_id = _str(item, "call_id", "item", 64, "invalid_item")
    if not call_id:
        raise ProtocolError("invalid_item", f"a {kind} item needs a call_id", "item.call_id")
    item_id = _str(item, "id", "item", 64, "invalid_item")
    if kind == "function_call_output":
        output = _get(item, "output", "item", (str,), "a string", "invalid_item")
        if not isinstance(output, str):
            raise ProtocolError("invalid_item", "a function_call_output item needs an output "
                                "string", "item.output")
        if len(output) > max_text:
            raise ProtocolError("text_too_long", f"output exceeds {max_text} characters",
                                "item.output")
        return FunctionItemCreate(kind, call_id, output=output, item_id=item_id)
    name = item.get("name")
    if not _name_ok(name):
        raise ProtocolError("invalid_item", "a function_call item needs a name", "item.name")
    arguments = _str(item, "arguments", "item", max_text, "invalid_item") or "{}"
    return FunctionItemCreate(kind, call_id, name=name, arguments=arguments, item_id=item_id)


def _item(item: Any, max_text: int) -> ItemCreate | FunctionItemCreate:
    if isinstance(item, dict) and item.get("type") in ("function_call_output",
                                                      "function_call"):
        return _function_item(item, max_text)
    if not isinstance(item, dict) or item.get("type", "message") != "message":
        raise ProtocolError("invalid_item", "only message, function_call and "
                            "function_call_output items are supported", "item")
    role = item.get("role")
    if role not in ("user", "assistant", "system"):
        raise ProtocolError("invalid_item", "a message item needs a role: user, assistant "
                            "or system", "item.role")
    content = item.get("content")
    if not isinstance(content, list) or len(content) > 32:
        raise ProtocolError("invalid_item", "item.content must be a list of content parts",
                            "item.content")
    texts = []
    images: list[bytes] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise ProtocolError("invalid_item", "a content part is an object",
                                f"item.content[{i}]")
        if part.get("type") == "input_image":
            if role != "user" or len(images) >= MAX_ITEM_IMAGES:
                raise ProtocolError("invalid_item", "input_image parts: user messages only, "
                                    f"at most {MAX_ITEM_IMAGES}", f"item.content[{i}]")
            images.append(_image(part.get("image_url"), f"item.content[{i}].image_url"))
            continue
        for key in ("text", "transcript"):
            value = part.get(key)
            if value is not None and not isinstance(value, str):
                raise ProtocolError("invalid_item", f"{key} must be a string",
                                    f"item.content[{i}].{key}")
            if value:
                _utf8(value, f"item.content[{i}].{key}", "invalid_item")
                texts.append(value)
    text = " ".join(texts).strip()
    if not text and not images:
        raise ProtocolError("invalid_item", "a message item needs text or image content",
                            "item.content")
    if len(text) > max_text:
        raise ProtocolError("text_too_long", f"text exceeds {max_text} characters",
                            "item.content")
    item_id = _str(item, "id", "item", 64, "invalid_item")
    return ItemCreate(role, text, item_id, tuple(images))


MAX_ITEM_IMAGES = 4


def _image(url: Any, path: str) -> bytes:
    """An input_image's ``image_url``: a base64 data URL (this server fetches nothing)."""
    import base64
    import binascii

    if not isinstance(url, str) or not url.startswith("data:image/") or \
            ";base64," not in url[:64]:
        raise ProtocolError("invalid_image", "image_url must be a base64 data URL "
                            "(data:image/png;base64,...)", path)
    try:
        return base64.b64decode(url.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_image", "image_url is not valid base64", path) from None


def _body(kind: str, event: dict, *, max_instructions: int, max_text: int) -> Any:
    if kind in ("session.update", "transcription_session.update"):
        s = event.get("session")
        if not isinstance(s, dict):
            raise ProtocolError("invalid_session", "session.update needs a session object",
                                "session")
        return SessionUpdate(_session(s, max_instructions),
                             kind == "transcription_session.update")
    if kind == "input_audio_buffer.append":
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise ProtocolError("invalid_audio", 'input_audio_buffer.append needs base64 '
                                '"audio"', "audio")
        return AudioAppend(audio)
    if kind == "input_audio_buffer.commit":
        return BufferCommit()
    if kind == "input_audio_buffer.clear":
        return BufferClear()
    if kind == "response.create":
        r = _obj(event, "response", "") or {}
        instructions = _str(r, "instructions", "response", max_instructions,
                            "invalid_instructions")
        return ResponseCreate(instructions, _tools(r, "response"),
                              _tool_choice(r, "response"))
    if kind == "response.cancel":
        return ResponseCancel(_str(event, "response_id", "", 64))
    if kind == "conversation.item.create":
        return _item(event.get("item"), max_text)
    if kind == "conversation.item.truncate":
        item_id = _str(event, "item_id", "", 64, "invalid_item_id")
        if item_id is None:
            raise ProtocolError("invalid_item_id", "item_id must be a string", "item_id")
        end_ms = _get(event, "audio_end_ms", "", (int,), "an integer >= 0",
                      "invalid_audio_end_ms")
        if not isinstance(end_ms, int) or not 0 <= end_ms <= 24 * 3600 * 1000:
            raise ProtocolError("invalid_audio_end_ms", "audio_end_ms must be an integer "
                                ">= 0", "audio_end_ms")
        index = _int(event, "content_index", "", 0, 64) or 0
        return ItemTruncate(item_id, end_ms, index)
    if kind == "output_audio_buffer.clear":
        return OutputClear()
    raise ProtocolError("unknown_event", f"unknown event type {kind[:64]!r}", "type")


CLIENT_EVENTS = frozenset({
    "session.update", "transcription_session.update", "input_audio_buffer.append",
    "input_audio_buffer.commit", "input_audio_buffer.clear", "response.create",
    "response.cancel", "conversation.item.create", "conversation.item.truncate",
    "output_audio_buffer.clear"})


def _depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            if d > limit:
                return False
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def parse_event(raw: str | bytes, *, max_bytes: int, max_instructions: int = 8000,
                max_text: int = 4000) -> ClientEvent:
    """One client message -> a typed event, or ProtocolError."""
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > max_bytes:
        raise ProtocolError("message_too_large", f"message of {size} bytes exceeds the "
                            f"{max_bytes}-byte maximum; send audio in smaller appends")
    try:
        event = json.loads(raw)
    except RecursionError:
        raise ProtocolError("invalid_json", "message nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("invalid_json", f"message is not valid JSON: {exc}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError("invalid_event", 'an event is a JSON object with a "type"')
    if not _depth_ok(event, MAX_DEPTH):
        raise ProtocolError("invalid_event", f"message nests deeper than {MAX_DEPTH} levels")
    kind = event["type"]
    event_id = event.get("event_id")
    event_id = event_id[:64] if isinstance(event_id, str) else None
    try:
        _utf8(kind, "type", "unknown_event")
        body = _body(kind, event, max_instructions=max_instructions, max_text=max_text)
    except ProtocolError as exc:
        exc.event_id = event_id
        raise
    return ClientEvent(kind, event_id, body)
