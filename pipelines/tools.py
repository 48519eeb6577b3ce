"""Function tools of a session and the checks on the calls a model makes to them.

The client declares tools (name, description, JSON-schema parameters); the LLM
answers with calls as (name, arguments JSON text). A small model can name a tool
that does not exist, write arguments that are not JSON, or leave out a required
field: ``check_call`` says what is wrong so the session reports it instead of
handing the client a call it cannot run. The schema check covers what function
parameters use (type, required, properties, enum, items, additionalProperties),
not all of JSON Schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

TOOL_CHOICES = ("auto", "none", "required")  # or "function:<name>"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})

    def chat_format(self) -> dict:
        """The shape chat templates and the LLM model read."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolCall:
    """A call the model made; ``arguments`` is JSON text, as the API passes it on."""

    name: str
    arguments: str
    call_id: str = ""
    item_id: str = ""


class InvalidToolCall(ValueError):
    pass


def chosen_tools(tools: tuple[Tool, ...], choice: str) -> tuple[tuple[Tool, ...], str]:
    """The tools a reply may use and the choice the model gets: a named choice keeps
    only that tool; "none" or no tools: no tools at all."""
    if not tools or choice == "none":
        return (), "none"
    if choice.startswith("function:"):
        name = choice.split(":", 1)[1]
        return tuple(t for t in tools if t.name == name), choice
    return tools, choice


def check_call(name: str, arguments: str, tools: tuple[Tool, ...]) -> ToolCall:
    """The call as the client will get it (arguments re-serialized compactly), or
    InvalidToolCall saying what is wrong."""
    tool = next((t for t in tools if t.name == name), None)
    if tool is None:
        known = ", ".join(t.name for t in tools) or "none"
        raise InvalidToolCall(f"the model called an unknown function {name[:64]!r} "
                              f"(declared: {known})")
    try:
        args = json.loads(arguments or "{}")
    except ValueError:
        raise InvalidToolCall(f"the model's arguments for {name} are not JSON: "
                              f"{arguments[:200]!r}") from None
    problems = schema_errors(args, tool.parameters, "arguments")
    if problems:
        raise InvalidToolCall(f"the model's arguments for {name} do not match its "
                              f"parameters: {'; '.join(problems[:5])}")
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool,
          "number": (int, float), "integer": int, "null": type(None)}


def schema_errors(value, schema: dict, path: str) -> list[str]:
    """What in ``value`` breaks ``schema`` (the subset function parameters use)."""
    if not isinstance(schema, dict):
        return []
    kinds = schema.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        ok = False
        for kind in names:
            py = _TYPES.get(kind)
            if py is None:
                ok = True  # a type we do not know: do not judge
            elif isinstance(value, bool) and kind not in ("boolean",):
                continue
            elif isinstance(value, py):
                ok = True
        if not ok:
            return [f"{path} must be {' or '.join(map(str, names))}"]
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        return [f"{path} must be one of {schema['enum']}"]
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in value:
                out.append(f"{path}.{key} is required")
        for key, sub in value.items():
            if key in props:
                out += schema_errors(sub, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{path}.{key} is not a declared parameter")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            out += schema_errors(sub, schema["items"], f"{path}[{i}]")
    return out
