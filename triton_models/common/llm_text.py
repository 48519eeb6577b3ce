"""The chat LLM model's request checks, tool calls and sentence-complete token budget.

Pure Python: the Triton model imports this file, the tests import it offline.
"""

from __future__ import annotations

import json

try:  # in the model repository, where common/ itself is on sys.path
    from sentences import sentence_ends
except ImportError:  # imported as the package rtmedia_models_common
    from rtmedia_models_common.sentences import sentence_ends

ROLES = frozenset({"system", "user", "assistant", "tool"})


def _call_ok(call) -> bool:
    fn = call.get("function") if isinstance(call, dict) else None
    return isinstance(fn, dict) and isinstance(fn.get("name"), str) \
        and isinstance(fn.get("arguments"), str)


def parse_messages(raw: bytes | str, max_bytes: int) -> list[dict]:
    """The chat messages of a request, or a ValueError that says what is wrong.
    An assistant message may carry ``tool_calls`` ({"function": {"name", "arguments"
    (JSON text)}}); a ``tool`` message is a call's result."""
    if len(raw) > max_bytes:
        raise ValueError(f"MESSAGES is {len(raw)} bytes; the maximum is {max_bytes}")
    try:
        messages = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"MESSAGES is not valid JSON: {exc}") from None
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
        and (not m.get("tool_calls") or (isinstance(m["tool_calls"], list)
             and all(_call_ok(c) for c in m["tool_calls"])))
        for m in messages
    ):
        raise ValueError('MESSAGES must be a non-empty JSON list of {"role": '
                         '"system"|"user"|"assistant"|"tool", "content": "..."}')
    return messages


# -- function calling ---------------------------------------------------------------------
# The tag format of Qwen2.5 and Hermes-style chat templates; models whose template
# does not know tools get the same format explained in their system prompt.
OPEN, CLOSE = "<tool_call>", "</tool_call>"


def parse_tools(raw: bytes | str, max_bytes: int) -> list[dict]:
    """TOOLS: a JSON list of {"type": "function", "function": {"name", "description",
    "parameters"}}."""
    if len(raw) > max_bytes:
        raise ValueError(f"TOOLS is {len(raw)} bytes; the maximum is {max_bytes}")
    try:
        tools = json.loads(raw) if raw else []
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"TOOLS is not valid JSON: {exc}") from None
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise ValueError('TOOLS must be a JSON list of {"type": "function", "function": '
                         '{"name": ..., "parameters": {...}}}')
    return tools


def check_tool_choice(choice: str, tools: list[dict]) -> str:
    names = {t["function"]["name"] for t in tools}
    if choice in ("auto", "none", "required") or (
            choice.startswith("function:") and choice[9:] in names):
        return choice
    raise ValueError(f"TOOL_CHOICE {choice[:80]!r} is not auto, none, required or "
                     "function:<one of the tools>")


def tools_prompt(tools: list[dict]) -> str:
    """The tools explained to a model whose chat template does not carry them."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("\n\nYou can call these functions. Their JSON schemas:\n<tools>\n" + lines +
            "\n</tools>\nTo call one, answer only with\n" + OPEN +
            '\n{"name": "<function name>", "arguments": {<arguments as JSON>}}\n' + CLOSE +
            "\nand wait for its result. Otherwise answer the user directly.")


def tool_messages(messages: list[dict], tools: list[dict], native: bool
                  ) -> tuple[list[dict], list[dict] | None]:
    """Messages (and the tools argument) for the chat template.

    ``native``: the template renders tools, calls and results itself (Qwen2.5): the
    calls' arguments become objects, as such templates expect. Otherwise the tools go
    into the system prompt, calls into the assistant's text and results into user
    messages, in the same tag format the model is asked to answer in.
    """
    out = []
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None) or []
        if native:
            if calls:
                m["tool_calls"] = [{"type": "function", "function": {
                    "name": c["function"]["name"],
                    "arguments": _loads_or_text(c["function"]["arguments"])}}
                    for c in calls]
            out.append(m)
            continue
        if calls:
            said = "\n".join(f'{OPEN}\n{{"name": {json.dumps(c["function"]["name"])}, '
                             f'"arguments": {c["function"]["arguments"] or "{}"}}}\n{CLOSE}'
                             for c in calls)
            m["content"] = (m["content"] + "\n" + said).strip()
        if m["role"] == "tool":
            m = {"role": "user", "content": f"<tool_response>\n{m['content']}\n"
                                            "</tool_response>"}
        out.append(m)
    if native:
        return out, tools or None
    if tools:
        if out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + tools_prompt(tools)}
        else:
            out.insert(0, {"role": "system", "content": tools_prompt(tools).strip()})
    return out, None


def _loads_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def forced_call_schema(tools: list[dict], choice: str) -> dict | None:
    """For ``required`` or a named choice: the JSON schema of the one call the model
    must write, {"name": <a tool>, "arguments": <its parameters>}; None otherwise."""
    if choice == "required":
        chosen = tools
    elif choice.startswith("function:"):
        chosen = [t for t in tools if t["function"]["name"] == choice[9:]]
    else:
        return None
    alternatives = [{
        "type": "object",
        "properties": {"name": {"const": t["function"]["name"]},
                       "arguments": t["function"].get("parameters") or {"type": "object"}},
        "required": ["name", "arguments"]} for t in chosen]
    return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}


class ToolCallParser:
    """Splits the model's streamed text into speech and function calls.

    Calls come in ``<tool_call>`` tags, or as bare JSON objects: llama.cpp drops
    special tokens when it detokenizes, and Qwen2.5's tags are special tokens, so its
    calls arrive as ``{"name": ..., "arguments": ...}`` lines. Text goes out as it
    comes, except what may be a call: a tail that could begin ``<tool_call>``, and
    everything from a ``{`` or a code fence on (speaking JSON is never right; if it
    is not a call it goes out at the end). ``finish`` returns what is left to say
    and the calls: {"name", "arguments" (JSON text)}, or with "error" for a call that
    cannot be read.
    """

    def __init__(self, keep_calls: bool = True) -> None:
        self.keep_calls = keep_calls  # False: calls are cut out of the speech and dropped
        self.buffer = ""
        self.said = False  # some text went out
        self.blocks: list[str] = []
        self.in_call = False
        self.held = False  # from a "{" or a fence on, all is held to the end
        self.lead = ""  # whitespace before any text: not worth a message of its own

    def push(self, piece: str) -> str:
        self.buffer += piece
        out = ""
        while not self.held:
            if self.in_call:
                end = self.buffer.find(CLOSE)
                if end < 0:
                    break
                self.blocks.append(self.buffer[:end])
                self.buffer = self.buffer[end + len(CLOSE):]
                self.in_call = False
                continue
            marks = [i for i in (self.buffer.find(OPEN), self.buffer.find("{"),
                                 self.buffer.find("```")) if i >= 0]
            if marks:
                at = min(marks)
                out += self.buffer[:at]
                if self.buffer.startswith(OPEN, at):
                    self.buffer = self.buffer[at + len(OPEN):]
                    self.in_call = True
                    continue
                self.buffer, self.held = self.buffer[at:], True
                break
            keep = _partial_mark(self.buffer)
            cut = len(self.buffer) - keep
            out, self.buffer = out + self.buffer[:cut], self.buffer[cut:]
            break
        return self._say(out)

    def _say(self, out: str) -> str:
        if not self.said:
            if not out.strip():
                self.lead += out
                return ""
            out, self.said = (self.lead + out).lstrip(), True
        return out

    def finish(self) -> tuple[str, list[dict]]:
        text, self.buffer = self.buffer, ""
        if self.in_call:  # the model stopped inside a call: read what it wrote
            self.blocks.append(text)
            text = ""
        elif self.held:
            bare = _bare_calls(_strip_fence(text))
            if bare:
                self.blocks += bare
                text = ""
        calls = [_read_call(b) for b in self.blocks]
        text = self._say(text) if self.said or not calls else ""
        return text, calls if self.keep_calls else []


def _partial_mark(text: str) -> int:
    """Length of the longest tail of ``text`` that may start ``<tool_call>`` or a fence."""
    for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-n:]) or "```".startswith(text[-n:]):
            return n
    return 0


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()


def _bare_calls(text: str) -> list[str]:
    """The JSON objects of held text when it is a run of calls; a call written badly
    is kept (to be reported); plain text with braces gives []."""
    decoder, blocks, at = json.JSONDecoder(), [], 0
    while at < len(text):
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        if at >= len(text):
            break
        try:
            obj, end = decoder.raw_decode(text, at)
        except ValueError:
            rest = text[at:]
            return [*blocks, rest] if '"name"' in rest else []
        if not (isinstance(obj, dict) and "name" in obj):
            return []
        blocks.append(text[at:end])
        at = end
    return blocks


def _read_call(block: str) -> dict:
    block = block.strip()
    if block.startswith("{{") and block.endswith("}}"):
        # Qwen2.5-Coder-1.5B doubles the braces around a call now and then
        block = block[1:-1].strip()
    try:
        call = json.loads(block)
    except ValueError:
        # the name is often still readable: say which call failed
        name = ""
        if '"name"' in block:
            name = block.split('"name"', 1)[1].split('"')[1] if block.count('"') > 3 else ""
        return {"name": name, "arguments": block, "error": f"not JSON: {block[:200]!r}"}
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return {"name": "", "arguments": block, "error": "a call needs a \"name\""}
    args = call.get("arguments", call.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        return {"name": call["name"], "arguments": args}
    return {"name": call["name"], "arguments": json.dumps(args, ensure_ascii=False)}


def check_max_tokens(max_tokens: int, limit: int) -> int:
    if not 1 <= max_tokens <= limit:
        raise ValueError(f"MAX_TOKENS {max_tokens} is outside 1..{limit}")
    return int(max_tokens)


class SentenceBudget:
    """Keeps a reply that runs into its token limit from ending mid-sentence.

    While the budget is ample every piece goes out at once. In the last ``margin``
    tokens the text after the last complete sentence is held back and released
    sentence by sentence. When ``max_tokens`` are spent mid-sentence, up to
    ``grace`` more tokens may finish the sentence; an unfinished tail is then
    dropped. Feed each generated piece (one token) to ``push`` and send what it
    returns; stop generating when ``done``; send what ``finish`` returns.

    The margin is at most half the budget, so a short reply still streams its first
    tokens at once; text streamed before the margin cannot be taken back.
    """

    def __init__(self, max_tokens: int, margin: int, grace: int):
        self.max_tokens = max_tokens
        self.margin = min(margin, max_tokens // 2)
        self.grace = grace
        self.tokens = 0
        self.text = ""
        self.released = 0  # text[:released] has been returned
        self.anchor: int | None = None  # where scanning starts: a sentence end or 0
        self.done = False
        self.truncated = False  # the budget, not the model, ended the reply

    @property
    def limit(self) -> int:
        """Tokens to ask the generator for."""
        return self.max_tokens + self.grace

    @property
    def reason(self) -> str:
        return "length" if self.truncated else "stop"

    def push(self, piece: str) -> str:
        self.tokens += 1
        self.text += piece
        if self.anchor is None and self.tokens <= self.max_tokens - self.margin:
            self.released = len(self.text)
            return piece
        if self.anchor is None:
            # Entering the margin: scan once from the start for the last sentence end
            # (the word before a period must be seen whole).
            ends = sentence_ends(self.text, final=False)
            self.anchor = ends[-1] if ends else 0
            self.anchor = min(self.anchor, self.released)
        out = self._release(final=False)
        if self.tokens >= self.max_tokens and (
                out or not self.text[self.released:].strip()):
            # Spent, and what was released ends a sentence: anything after it is the
            # start of a sentence there is no budget for.
            self.done = self.truncated = True
        elif self.tokens >= self.limit:
            self.done = self.truncated = True
            out += self._cut()
        return out

    def _release(self, final: bool) -> str:
        ends = [self.anchor + e for e in sentence_ends(self.text[self.anchor:], final=final)]
        ends = [e for e in ends if e > self.released]
        if not ends:
            return ""
        out = self.text[self.released:ends[-1]]
        self.released = self.anchor = ends[-1]
        return out

    def _cut(self) -> str:
        """Whole sentences only, unless the reply has no sentence end at all: then
        all of it (a long fragment beats a short one or silence)."""
        out = self._release(final=True)
        if self.anchor == 0:  # no sentence end seen (one is never at offset 0)
            out += self.text[self.released:]
            self.released = len(self.text)
        return out

    def finish(self, model_stopped: bool) -> str:
        """The held text still worth sending once generation ended.

        ``model_stopped``: the model ended the reply itself (end of sequence), so
        all of it goes out. Otherwise the generator hit its own limit.
        """
        if self.done:
            return ""
        self.done = True
        if self.anchor is None:
            return ""  # nothing was held
        if model_stopped:
            out, self.released = self.text[self.released:], len(self.text)
            return out
        self.truncated = True
        return self._cut()
